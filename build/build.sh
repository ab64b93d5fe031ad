#!/usr/bin/env bash
# Build the double-click app: dist/LatentDesk/ (one folder: the LatentDesk executable, the
# built-in model, tokenizer and icons inside). Run from anywhere, in the environment the app
# runs in (README: the install command). The bundle takes the torch installed there: the CPU
# build by default (no CUDA libraries); for a CUDA build, first install a CUDA wheel into that
# environment (pip install torch --index-url https://download.pytorch.org/whl/cu128) and run
# LATENTDESK_CUDA_BUILD=1 build/build.sh (without it, CUDA libraries are left out of the bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
# PyInstaller at the version (and hashes) pinned in requirements/build.txt, as every install is.
python -m pip install -q --require-hashes -r requirements/build.txt
python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/work build/latentdesk.spec
du -sh dist/LatentDesk
echo "built dist/LatentDesk/LatentDesk; check it with: QT_QPA_PLATFORM=offscreen dist/LatentDesk/LatentDesk --self-test"
