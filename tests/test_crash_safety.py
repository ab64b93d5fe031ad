"""A crash never leaves a broken picture: a process saving images is killed (SIGKILL) at random
moments during 50 saves; no partial PNG ever appears under its final name, every save that
finished is in the history, and the temporary files the kills left are cleaned up at start."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from app.history import list_outputs
from core.metadata.png_files import read_parameters, remove_stale_temporaries

SAVES = 50
MIN_KILLS = 5

# Saves numbered images until `count` exist, printing each finished path; large noisy pictures make
# every save take long enough (tens of ms, with fsync) for a kill to land inside one.
SAVER = """
import os, sys
import numpy as np
from PIL import Image
from core.metadata.png_files import save_png
folder, count = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(os.getpid())
while len([n for n in os.listdir(folder) if n.endswith(".png") and not n.startswith(".")]) < count:
    image = Image.fromarray(rng.integers(0, 256, (768, 768, 3), dtype=np.uint8))
    print(save_png(image, folder, "a red star\\nSteps: 20, Seed: %d" % rng.integers(1 << 30)), flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_saves_never_leave_a_partial_png(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    rng = random.Random(1)
    finished: list[Path] = []
    kills = 0
    root = Path(__file__).resolve().parents[1]
    target = SAVES
    while len(list_outputs(folder)) < target or kills < MIN_KILLS:
        if len(list_outputs(folder)) >= target:
            target += 10     # a loaded machine saves slowly and few kills land: keep going until enough do
            assert target <= 10 * SAVES, f"only {kills} kills landed in {target} saves"
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(folder), str(target)], cwd=root,
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.2))    # the interpreter and numpy take ~0.3 s to start
        if saver.poll() is None:
            saver.send_signal(signal.SIGKILL)
            kills += 1
        out, _ = saver.communicate(timeout=60)
        finished += [Path(line) for line in out.split()]
        for png in list_outputs(folder):         # the names the history would show
            with Image.open(png) as image:
                image.load()                       # raises on a truncated file
            assert read_parameters(png).startswith("a red star"), png
    assert kills >= MIN_KILLS

    names = set(list_outputs(folder))
    assert set(finished) <= names, "a save that reported success is missing from the history"
    left = [p for p in folder.iterdir() if p.name.startswith(".")]
    for path in left:                            # as if written before the last start
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    removed = remove_stale_temporaries(folder)
    assert sorted(removed) == sorted(left)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert set(list_outputs(folder)) == names    # cleaning touched no finished picture
    print(f"\n[crash safety] {kills} kills, {len(left)} temporary files left and cleaned, {len(names)} PNGs intact")
