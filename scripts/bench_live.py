"""Issue 22's Live figure: with a 1-step SD1.5-shaped model, the last keystroke to the new image shown,
in the real window, driven as a person types.

    QT_QPA_PLATFORM=offscreen python scripts/bench_live.py [--edits 5] [--json out.json]

A random SD1.5-shaped checkpoint (app/cli/bench/random_sd15.py, fp16 on disk) named like a Turbo file
(`sd15_turbo.safetensors`, so the window gives it the Turbo preset: 1 step of Euler a on SGM Uniform,
guidance off, Live on) with a TAESD-shaped decoder beside it (random weights: the same work as the real
one), opened with bf16 networks and Draft on. Each edit types a word a key at a time (8 keys a second),
then waits; the time from the last key to the window's image changing is recorded (it includes Live's
debounce, 400 ms). Issue 22 asks ≤ 3.5 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("red", "mountain", "lake", "sunset", "forest", "castle", "river", "snow")


def write_model(folder: Path) -> Path:
    import torch

    from app.cli.bench.random_sd15 import write_full_size_sd15
    from core.atomic_files import save_tensors
    from core.nets.taesd import TaesdDecoder

    path = folder / "sd15_turbo.safetensors"
    if not path.exists():
        write_full_size_sd15(path)
    torch.manual_seed(0)
    save_tensors(folder / "taesd_decoder.safetensors", TaesdDecoder().state_dict(), {})
    return path


async def measure(model: Path, edits: int) -> list[float]:
    from app.jobs import Finished
    from app.settings import AppPaths, open_settings
    from app.widgets.model_sources import OFFERED_KEY
    from app.window import MainWindow

    folder = Path(tempfile.mkdtemp(prefix="latentdesk-live-"))
    paths = AppPaths(folder / "data", folder / "out", folder / "settings.ini")
    settings = open_settings(paths)
    settings.setValue(OFFERED_KEY, True)
    settings.setValue("model", str(model))
    settings.setValue("form/steps", 20)          # a form was saved before: the model's type, not a first start,
    settings.setValue("form/precision", "bfloat16")     # sets the recipe
    settings.setValue("form/draft", True)
    window = MainWindow(paths, settings)
    window.confirm_close = lambda unsaved, running: "discard"
    window.show()
    while window.model is None:
        await asyncio.sleep(0.1)
    panel = window.panel
    assert panel.model_type.currentData() == "turbo" and panel.steps.value() == 1, "the Turbo preset did not apply"
    assert panel.live.isChecked() and panel.draft.isEnabled() and panel.draft.isChecked()
    shown: list[float] = []
    window.jobDone.connect(lambda message: isinstance(message, Finished) and shown.append(time.perf_counter()))
    panel.prompt.setPlainText("a photograph of a")
    await asyncio.sleep(15)                      # the first Live run: warm-up, not counted
    latencies = []
    for word in WORDS[:edits]:
        before = len(shown)
        for char in " " + word:
            panel.prompt.insertPlainText(char)
            last_key = time.perf_counter()
            await asyncio.sleep(0.125)
        while len(shown) == before or shown[-1] < last_key:
            await asyncio.sleep(0.01)
        latencies.append(shown[-1] - last_key)
        print(f"'{word}': last key -> image {latencies[-1]:.2f} s", flush=True)
        await asyncio.sleep(1.0)
    window.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "latentdesk-live-model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    model = write_model(args.models)

    import qasync
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)
    with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
        latencies = runner.run(measure(model, args.edits))
    del app
    result = {"latencies_s": [round(s, 3) for s in latencies], "median_s": round(statistics.median(latencies), 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
