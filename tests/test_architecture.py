"""The layout is a contract: the import-linter contracts in pyproject.toml hold, each one fails on a
planted violation, and the docs' folder map names every folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_IDS = [c["id"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
                ["contracts"]]


def lint_imports(tree: Path, *contracts: str) -> subprocess.CompletedProcess:
    """lint-imports over `tree`'s core/ and app/ (PYTHONPATH puts them ahead of the installed ones)."""
    args = [arg for contract in contracts for arg in ("--contract", contract)]
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-c", script, "--no-cache", "--no-logo", *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_every_contract_holds():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(CONTRACT_IDS)} kept, 0 broken." in done.stdout


# (contract, module that gets the planted line, the line): each breaks exactly what its contract forbids.
PLANTED = [
    ("engine-alone", "core/nets/unet.py", "from PySide6 import QtCore"),
    ("engine-alone", "core/generate.py", "import diffusers"),
    ("engine-alone", "core/request.py", "import app.window"),
    ("engine-stages", "core/nets/vae.py", "from core.generate import generate"),            # upwards
    ("engine-stages", "core/sampling/samplers.py", "import core.train.loop"),             # engine → training
    ("engine-stages", "core/generate.py", "import core.shapes.world"),                     # engine → shapes world
    ("engine-stages", "core/text/prompts.py", "import core.nets.unet"),                   # across one layer
    ("engine-stages", "core/stray.py", '"""A new module not given a layer."""'),           # exhaustive
    ("app-layers", "app/session.py", "from app.widgets.controls import ControlsPanel"),    # model → view
    ("app-layers", "app/worker.py", "import app.session"),                                # upwards
    ("app-layers", "app/stray.py", '"""A new module not given a layer."""'),               # exhaustive
    ("no-circles", "core/text/tokenizer.py", "import core.text.prompts"),                 # prompts imports tokenizer
    ("no-circles", "app/cli/progress.py", "import app.cli.commands"),                     # commands imports progress
    ("cli-without-qt", "app/cli/commands.py", "from PySide6 import QtWidgets"),
    ("reference-in-bench", "app/main.py", "import diffusers"),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the sources and the contracts, to plant violations in."""
    keep_python = shutil.ignore_patterns("__pycache__", "*.pyc", "*.png", "*.safetensors")
    for package in ("core", "app"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=keep_python)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(("contract", "module", "line"), PLANTED, ids=[f"{c}:{m}" for c, m, _ in PLANTED])
def test_each_contract_fails_on_a_planted_violation(tree, contract, module, line):
    assert contract in CONTRACT_IDS
    assert lint_imports(tree, contract).returncode == 0, "the copy must pass before the plant"
    path = tree / module
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(before + f"\n{line}  # planted\n", encoding="utf-8")
    done = lint_imports(tree, contract)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
    planted_module = module.removesuffix(".py").replace("/", ".")
    assert planted_module.rsplit(".", 1)[0] in done.stdout


def test_every_contract_has_a_planted_violation():
    assert {contract for contract, _, _ in PLANTED} == set(CONTRACT_IDS)


# --- sizes, the map, and what the sources cite ----------------------------------------------------------

def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_window_is_small_and_no_module_is_long():
    assert len((ROOT / "app" / "window.py").read_text(encoding="utf-8").splitlines()) <= 300
    long = {str(p.relative_to(ROOT)): n for p in python_files("core", "app")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert long == {}


def source_folders() -> list[str]:
    """Every folder that holds a file git tracks or would track (build outputs and caches are ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    folders = {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}
    return sorted(f for f in folders if not f.startswith(".") and (ROOT / f).is_dir())


def test_the_architecture_map_names_every_folder():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    folder_map = text.split("```", 2)[1]          # the map is the first code block
    named = set(re.findall(r"^\s*([\w/.-]+)/\s", folder_map, flags=re.MULTILINE))
    missing = [folder for folder in source_folders() if folder not in named]
    assert missing == []
    stale = [folder for folder in named if not (ROOT / folder).is_dir()]
    assert stale == []


def test_sources_cite_only_what_is_in_the_repository():
    """A docstring's `docs/X.md` must be there for a reader of the repository; a path outside it is not."""
    outside = re.compile(r"\.\./shared|/work/")
    cited_doc = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
    problems = []
    for path in python_files("core", "app"):
        text = path.read_text(encoding="utf-8")
        if outside.search(text):
            problems.append(f"{path.relative_to(ROOT)}: a path outside the repository")
        problems += [f"{path.relative_to(ROOT)}: {doc}" for doc in cited_doc.findall(text) if not (ROOT / doc).is_file()]
    assert problems == []


def test_scripts_do_not_import_the_tests():
    imports_tests = re.compile(r"^\s*(from|import) tests\b", re.MULTILINE)
    importing = [p.name for p in python_files("scripts") if imports_tests.search(p.read_text(encoding="utf-8"))]
    assert importing == []
