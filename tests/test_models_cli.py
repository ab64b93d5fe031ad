"""`latentdesk models list|get` against a local stand-in for the Hub (tests/hub_server.py).

Most cases run the command in this process, with the Hub's address swapped in as HF_ENDPOINT would set
it at import; three run it as a real process with HF_ENDPOINT and HF_HUB_OFFLINE in its environment,
one of them killed (SIGKILL) halfway through a slow download and run again: it resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from app.cli.commands import main
from core.fetch.catalogue import find_entry
from core.fetch.part_files import CHUNK
from tests.hub_server import TOKEN, hub_server_fixture  # noqa: F401 - the hub_server fixture

REPO, FILE = "someone/model", "model.safetensors"
ROOT = Path(__file__).resolve().parents[1]


def safetensors_like(size: int) -> bytes:
    return b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(size - 16)


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path):
    """The Hub at the test server, the data folder in tmp_path, no token from this machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub_server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("LATENTDESK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LATENTDESK_MODEL_DIRS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    return hub_server


def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "models"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def refusal(err: str) -> str:
    """The one line a refusal prints (after the progress bar's lines, if it drew one)."""
    last = err.strip().splitlines()[-1]
    assert last.startswith("latentdesk: ")
    return last


def test_get_repo_file_prints_the_path_last(hub, capsys, tmp_path):
    data = safetensors_like(2 * 1024 * 1024)
    hub.add_file(REPO, FILE, data)
    code, out, err = run(capsys, "get", f"{REPO}:{FILE}")
    assert code == 0
    path = Path(out.strip().splitlines()[-1])
    assert path == models_dir(tmp_path) / FILE and path.read_bytes() == data
    assert "2.1 MB / 2.1 MB" in err       # the progress bar, on stderr


def test_get_a_catalogue_name_uses_its_file_and_folder(hub, capsys, tmp_path):
    entry = find_entry("lcm-lora-sd15")
    hub.add_file(entry.repo, entry.file, safetensors_like(4096), revision=entry.revision)
    code, out, _ = run(capsys, "get", "lcm-lora-sd15")
    assert code == 0 and out.strip().splitlines()[-1] == str(models_dir(tmp_path) / "loras" / entry.save_as)
    code, out, _ = run(capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["models_dir"] == str(models_dir(tmp_path))
    assert {e["name"]: e["installed"] for e in listing["catalogue"]}["lcm-lora-sd15"].endswith(entry.save_as)
    assert [(m["kind"], m["where"]) for m in listing["installed"]] == [("lora", "models folder")]


def test_get_to_a_folder_and_with_a_revision(hub, capsys, tmp_path):
    hub.add_file(REPO, FILE, safetensors_like(4096), revision="v2")
    code, out, _ = run(capsys, "get", f"{REPO}:{FILE}", "--revision", "v2", "--to", str(tmp_path / "here"))
    assert code == 0 and out.strip() == str(tmp_path / "here" / FILE)


def test_list_shows_the_catalogue_and_the_shared_folders(hub, capsys, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "mine.safetensors").write_bytes(safetensors_like(64))
    monkeypatch.setenv("LATENTDESK_MODEL_DIRS", str(shared))
    code, out, _ = run(capsys, "list")
    assert code == 0 and "sd15" in out and "Stable Diffusion 1.5" in out
    assert f"{shared / 'mine.safetensors'}  (env: {shared})" in out


@pytest.mark.parametrize("argv, words", [
    (["get", "no-such-model"], "no model called 'no-such-model' in the catalogue"),
    (["get", f"{REPO}:missing.safetensors"], "has no file 'missing.safetensors'"),
    (["get", f"{REPO}:model.ckpt"], "pickle"),
])
def test_refusals_exit_2_with_one_line(hub, capsys, argv, words):
    hub.add_file(REPO, FILE, safetensors_like(4096))
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and words in refusal(err)


def test_a_gated_repo_says_how_to_log_in(hub, capsys, tmp_path, monkeypatch):
    hub.add_file(REPO, FILE, safetensors_like(4096), gated=True)
    code, _, err = run(capsys, "get", f"{REPO}:{FILE}")
    assert code == 2 and "hf auth login" in refusal(err) and "HF_TOKEN" in refusal(err)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    code, out, err = run(capsys, "get", f"{REPO}:{FILE}")
    assert code == 0 and TOKEN not in out + err


def test_a_hash_mismatch_leaves_the_models_folder_empty(hub, capsys, tmp_path):
    hub.add_file(REPO, FILE, safetensors_like(4096))
    hub.wrong_sha256 = True
    code, _, err = run(capsys, "get", f"{REPO}:{FILE}")
    assert code == 2 and "checksum" in refusal(err)
    assert list(models_dir(tmp_path).iterdir()) == []


def test_a_full_disk_is_refused_with_the_figures(hub, capsys, monkeypatch):
    hub.add_file(REPO, FILE, safetensors_like(4096))
    real = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real._replace(free=1_000_000))
    code, _, err = run(capsys, "get", f"{REPO}:{FILE}")
    assert code == 2 and "only 1.0 MB is free" in refusal(err)


# -- as a real process, with the Hub's variables in its environment ------------------------------------

def cli(hub_server, tmp_path: Path, *argv: str, **env: str) -> subprocess.Popen:
    environment = os.environ | {"HF_ENDPOINT": hub_server.url, "LATENTDESK_DATA_DIR": str(tmp_path / "data"),
                                "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HUB_DISABLE_TELEMETRY": "1"} | env
    return subprocess.Popen([sys.executable, "-m", "app", "models", *argv], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_mid_file_then_run_again_resumes(hub_server, tmp_path):
    data = safetensors_like(4 * 1024 * 1024)
    hub_server.add_file(REPO, FILE, data)
    hub_server.chunk_delay = 0.03        # 64 chunks of 64 KiB: about two seconds
    first = cli(hub_server, tmp_path, "get", f"{REPO}:{FILE}")
    deadline = time.monotonic() + 60
    while not any(e.method == "GET" and e.sent > 0.4 * len(data) for e in hub_server.log):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    part = models_dir(tmp_path) / f".{FILE}.part"
    assert part.exists() and not (models_dir(tmp_path) / FILE).exists()

    hub_server.chunk_delay = 0
    second = cli(hub_server, tmp_path, "get", f"{REPO}:{FILE}")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.strip().splitlines()[-1] == str(models_dir(tmp_path) / FILE)
    assert (models_dir(tmp_path) / FILE).read_bytes() == data
    resumed = [e for e in hub_server.log if e.method == "GET"][-1]
    assert resumed.range_start > 0.4 * len(data)
    assert hub_server.bytes_sent() - len(data) <= CHUNK      # finished bytes sent again: at most a chunk


def test_offline_mode_from_the_environment(hub_server, tmp_path):
    hub_server.add_file(REPO, FILE, safetensors_like(4096))
    process = cli(hub_server, tmp_path, "get", f"{REPO}:{FILE}", HF_HUB_OFFLINE="1")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "offline" in refusal(err) and hub_server.log == []
