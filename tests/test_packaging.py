"""The double-click bundle: build/build.sh, then the frozen executable's --self-test.

Building takes minutes and installs PyInstaller, so it runs only when asked for:

    LATENTDESK_BUILD_TEST=1 python -m pytest tests/test_packaging.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.resources import builtin_model_path
from tests.tiny_models import write_single_file

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.environ.get("LATENTDESK_BUILD_TEST") != "1",
                                reason="builds the bundle (minutes): set LATENTDESK_BUILD_TEST=1")


def test_the_bundle_builds_and_passes_its_self_test(tmp_path):
    build = subprocess.run(["bash", str(ROOT / "build" / "build.sh")], cwd=ROOT, capture_output=True, text=True,
                           timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    bundle = ROOT / "dist" / "LatentDesk"
    executable = bundle / "LatentDesk"
    assert executable.is_file() and os.access(executable, os.X_OK)
    assert (bundle / "_internal" / "resources" / "tokenizer" / "vocab.json").is_file()
    assert not list(bundle.rglob("libcudart*")), "the CPU bundle carries CUDA libraries"
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"\n[bundle] {size / 2**30:.2f} GiB")
    assert size <= 1.5 * 2**30

    # The built-in model when it ships; until then a small random model checks the same path.
    model = [] if builtin_model_path().is_file() else ["--model", str(write_single_file("sd1", tmp_path / "m.safetensors"))]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LATENTDESK_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run([str(executable), "--self-test", *model], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
