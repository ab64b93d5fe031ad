"""What the README installs is pinned: requirements/*.txt hold one version and its hashes for every
package, within pyproject.toml's ranges, and the README, CI and the bundle install from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_readme import readme_commands

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TORCH = re.search(r'TORCH = "(torch==[^"]+)"', (ROOT / "scripts" / "update_pins.py").read_text()).group(1)


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/NAME.txt as {package: (version, hashes)} for this Python and platform."""
    pins: dict[str, tuple[str, list[str]]] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / f"{name}.txt").read_text())
    for entry in entries:
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split("\\")[0].strip()
        spec, _, marker = head.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        package, version = spec.strip().split("==")
        assert canonicalize_name(package) not in pins, f"{package} pinned twice for this platform in {name}.txt"
        pins[canonicalize_name(package)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


@pytest.mark.parametrize("lock", ["app", "dev", "build", "reference"])
def test_every_locked_package_has_one_version_and_its_hashes(lock):
    pins = locked(lock)
    assert pins
    for package, (version, hashes) in pins.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (package, version)
        assert hashes, f"{package} has no sha256 in {lock}.txt"


@pytest.mark.parametrize(("lock", "wanted"), [("app", PROJECT["dependencies"]),
                                              ("dev", PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"])])
def test_locks_pin_every_dependency_within_pyprojects_range(lock, wanted):
    pins = locked(lock)
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            assert TORCH.split("==")[1] in requirement.specifier, f"{TORCH} is outside pyproject's {line}"
            assert name not in pins, "torch is installed on its own, by exact version"
            continue
        assert name in pins, f"{requirement.name} is not pinned in {lock}.txt"
        assert pins[name][0] in requirement.specifier, f"{lock}.txt pins {name} {pins[name][0]}, outside {line}"


def test_the_packages_we_ship_have_upper_bounds():
    bounded = {canonicalize_name(Requirement(line).name) for line in PROJECT["dependencies"]
               if any(spec.operator in ("<", "<=", "==") for spec in Requirement(line).specifier)}
    assert {"torch", "transformers", "pyside6-essentials", "huggingface-hub"} <= bounded


def test_tests_and_bundle_run_on_the_versions_users_get():
    app = locked("app")
    for other in ("dev", "build"):
        for package, (version, _) in locked(other).items():
            if package in app:
                assert version == app[package][0], f"{other}.txt has {package} {version}, app.txt {app[package][0]}"


def test_readme_ci_and_build_install_from_the_pins():
    install, tests = readme_commands()
    assert "pip install --require-hashes -r requirements/app.txt" in install
    assert "pip install --require-hashes -r requirements/dev.txt" in tests
    assert "--require-hashes -r requirements/reference.txt" in tests
    for command in (install, tests):
        assert f"pip install {TORCH}" in command and "pip install --no-deps -e ." in command
        # every pip install in the set-up commands comes from a lock, torch by exact version, or is ours
        for step in re.findall(r"pip install ([^&]+)", command):
            assert "--require-hashes" in step or step.strip() in (TORCH, "--no-deps -e ."), step
    assert "--require-hashes -r requirements/build.txt" in (ROOT / "build" / "build.sh").read_text()
