"""Soak the window: N Live-mode generations on the built-in model, driven like a person would.

    QT_QPA_PLATFORM=offscreen python scripts/soak_live.py --runs 1000 --json soak.json

Random prompt edits (typing and deleting at ~8 keys a second, then a pause past Live's debounce)
and slider moves, in the real MainWindow with qasync's loop. It fails (exit 1) on a hang (a run
that does not end within --hang-s), on any exception or error logged, or when the resident memory
after the first 50 runs grows by 5 % or more. Throwaway data and output folders.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil
import qasync
from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["red", "green", "blue", "yellow", "star", "circle", "square", "triangle", "small", "large",
         "top left", "bottom right", "centre", "on", "a", "background", "purple", "orange"]


class ErrorCount(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.records.append(self.format(record))


def the_form(panel):
    """What the form asks for, without the seed: a Live run's drawn seed is no edit."""
    return dataclasses.replace(panel.request(), seed=0)


async def soak(runs: int, hang_s: float, seed: int) -> dict:
    from app.settings import AppPaths, open_settings
    from app.window import MainWindow

    folder = Path(tempfile.mkdtemp(prefix="latentdesk-soak-"))
    paths = AppPaths(folder / "data", folder / "out", folder / "data" / "settings.ini")
    window = MainWindow(paths, open_settings(paths))
    window.confirm_close = lambda unsaved, running: "discard"
    window.show()
    loaded = asyncio.get_running_loop().create_future()
    window.modelLoaded.connect(lambda spec: loaded.done() or loaded.set_result(spec))
    window.modelFailed.connect(lambda message: loaded.done() or loaded.set_exception(RuntimeError(message)))
    await asyncio.wait_for(loaded, 120)
    panel, rng = window.panel, random.Random(seed)
    panel.live.setChecked(True)
    finished: list[str] = []      # the kinds of final message only: a message holds its images and frames
    window.jobDone.connect(lambda message: finished.append(type(message).__name__))
    process, rss, hangs, seconds = psutil.Process(), [], 0, []
    while len(finished) < runs:
        before, started, form = len(finished), time.perf_counter(), the_form(panel)
        if rng.random() < 0.25:       # a slider move
            slider = rng.choice([panel.guidance.slider, panel.steps])
            slider.setValue(rng.randint(slider.minimum(), min(slider.maximum(), 30)))
        else:                         # type or delete a few characters, a key at a time
            text = panel.prompt.toPlainText()
            if len(text) > 60 or (text and rng.random() < 0.3):
                panel.prompt.setPlainText(text[: rng.randint(0, len(text))])
            else:
                for char in " " + rng.choice(WORDS):
                    panel.prompt.insertPlainText(char)
                    await asyncio.sleep(0.12)
        if the_form(panel) == form or not form.prompt.strip() or not the_form(panel).prompt.strip():
            await asyncio.sleep(0.6)  # no change, or no prompt: Live has nothing to draw (a run may end)
            continue
        while len(finished) == before and time.perf_counter() - started < hang_s:
            await asyncio.sleep(0.05)
        if len(finished) == before:
            hangs += 1
            break
        seconds.append(time.perf_counter() - started)
        rss.append(process.memory_info().rss)
        if len(rss) % 50 == 0:
            print(f"{len(finished)} runs, RSS {rss[-1] / 2**20:.1f} MiB", flush=True)
        await asyncio.sleep(rng.uniform(0.1, 0.6))      # the person looks at the picture
    window.close()
    base = rss[min(49, len(rss) - 1)]
    return {"runs": len(finished), "finished": finished.count("Finished"),
            "hangs": hangs, "rss_after_50_mib": round(base / 2**20, 1), "rss_end_mib": round(rss[-1] / 2**20, 1),
            "rss_growth_after_50_pct": round(100 * (rss[-1] - base) / base, 2),
            "rss_max_mib": round(max(rss) / 2**20, 1),
            "median_edit_to_result_s": round(sorted(seconds)[len(seconds) // 2], 3),
            "unsaved_live_items": len(window.history.unsaved_items()),
            "pngs_written": len(list((folder / "out").glob("*.png")))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--hang-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    errors = ErrorCount()
    logging.getLogger().addHandler(errors)
    exceptions: list[str] = []
    sys.excepthook = lambda kind, value, tb: exceptions.append(f"{kind.__name__}: {value}")
    app = QApplication.instance() or QApplication(sys.argv)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with loop:
        result = loop.run_until_complete(soak(args.runs, args.hang_s, args.seed))
    result["errors_logged"] = errors.records[:20]
    result["exceptions"] = exceptions[:20]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = not result["hangs"] and not errors.records and not exceptions and result["rss_growth_after_50_pct"] < 5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
