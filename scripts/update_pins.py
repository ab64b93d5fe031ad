"""Re-pin the exact versions Latent Desk installs: requirements/app.txt, dev.txt, build.txt and reference.txt.

    pip install uv && python scripts/update_pins.py          # then run the tests and the bundle (.ci/run)

`pyproject.toml` keeps the ranges we support; these lock files hold the one version of every
package (with the index's sha256 of each file) that the README's commands install and CI tests,
so a new upstream release never reaches a user before it has passed the tests here.

torch is the one package left out of the locks: its wheel differs by machine (CPU or CUDA build,
from PyPI or PyTorch's own index), so the README installs it by exact version on its own line
(TORCH below). Its own dependencies are locked like everything else, so that step adds nothing
unpinned. dev.txt is resolved under app.txt's versions: the tests run on what users get.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
TORCH = "torch==2.13.0"
PYTHON = "3.11"     # the lowest Python pyproject.toml allows; the lock is universal above it


def torch_requirements() -> list[str]:
    """What the installed torch needs at run time (its extras left out)."""
    wanted = importlib.metadata.requires("torch") or []
    return [line for line in wanted if "extra ==" not in line]


def compile_lock(inputs: list[str], output: Path, *options: str) -> None:
    # The inputs go in on standard input, so the lock's "via" notes name no temporary file.
    command = ["uv", "pip", "compile", "-", "--output-file", str(output), "--generate-hashes", "--universal",
               "--python-version", PYTHON, "--no-header", "--quiet", *options]
    subprocess.run(command, input="\n".join(inputs) + "\n", text=True, check=True)
    header = (f"# Exact versions for Latent Desk ({output.name}); made by scripts/update_pins.py, do not edit.\n"
              f"# torch is installed by exact version on its own ({TORCH}): see the README.\n")
    output.write_text(header + output.read_text())


def main() -> int:
    if shutil.which("uv") is None:
        print("update_pins needs uv: pip install uv", file=sys.stderr)
        return 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = [line for line in project["dependencies"] if not line.replace(" ", "").startswith("torch")]
    app = REQUIREMENTS / "app.txt"
    compile_lock(ours + torch_requirements(), app)
    compile_lock(ours + torch_requirements() + project["optional-dependencies"]["dev"],
                 REQUIREMENTS / "dev.txt", "--constraint", str(app))
    # build/build.sh installs this into the app's own environment to make the bundle.
    pyinstaller = next(line for line in project["optional-dependencies"]["dev"] if line.startswith("pyinstaller"))
    compile_lock([pyinstaller], REQUIREMENTS / "build.txt", "--constraint", str(app))
    # The tests compare our tokenizer with OpenCLIP's; its own dependencies (torchvision, timm) are
    # never needed for that, so it is installed alone (pip install --no-deps).
    # peft (with accelerate, which it imports) is diffusers' LoRA loader, the oracle of the LoRA parity
    # tests; resolved with its dependencies it would pull torch's CUDA build from PyPI, and everything
    # else it needs is already in dev.txt.
    compile_lock(["open_clip_torch", "peft", "accelerate"], REQUIREMENTS / "reference.txt", "--no-deps")
    print(f"pinned requirements/app.txt, dev.txt, build.txt and reference.txt; torch stays {TORCH} (README)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
