"""The `hub_server` fixture: scripts/fake_hub.py's stand-in for the Hugging Face Hub, one per test."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from scripts.fake_hub import TOKEN, HubServer

__all__ = ["TOKEN", "HubServer", "hub_server", "hub_server_fixture"]


@pytest.fixture(name="hub_server")
def hub_server_fixture(monkeypatch):
    """A HubServer for one test. Import `hub_server_fixture` (its own name keeps ruff's F811 quiet in
    tests that take `hub_server` as an argument) or `hub_server`: either gives the `hub_server` fixture.

    huggingface_hub's telemetry is off meanwhile: with it on, its first request fetches a registry of
    AI agents from the real Hub (utils/_detect_agent.py), and a test must not reach out."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    server = HubServer()
    yield server
    server.close()


hub_server = hub_server_fixture
