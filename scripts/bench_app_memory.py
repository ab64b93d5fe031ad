"""Resident memory over many generations in one app session (issue 5's leak check).

    QT_QPA_PLATFORM=offscreen python scripts/bench_app_memory.py [--runs 100] [--preview auto] [--model FILE]

Opens the real window on the built-in model (or FILE, as if the user had picked it last time) (offscreen, in throwaway data and output folders),
presses Generate `runs` times, waiting for each image, and prints the resident set size (RSS)
after runs 1, 10, 20, ..., and the growth from run 10 to the last (the bar: < 5 %).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def bench(runs: int, preview: str, model: str | None) -> int:
    from app.jobs import Finished, PreviewMode
    from app.settings import AppPaths, open_settings
    from app.window import MainWindow

    folder = Path(tempfile.mkdtemp(prefix="latentdesk-bench-"))
    paths = AppPaths(folder / "data", folder / "out", folder / "data" / "settings.ini")
    settings = open_settings(paths)
    if model:
        settings.setValue("model", str(Path(model).resolve()))
    window = MainWindow(paths, settings)
    window.show()
    while window.model is None:
        await asyncio.sleep(0.05)
    panel = window.panel
    panel.preview_mode.setCurrentIndex(panel.preview_mode.findData(PreviewMode(preview).value))
    panel.live.setChecked(False)
    panel.prompt.setPlainText("a large red star in the top left corner on a blue background")
    done = asyncio.Event()
    window.jobDone.connect(lambda message: done.set())
    samples = {}
    for run in range(1, runs + 1):
        done.clear()
        window.generate()
        await done.wait()
        if not isinstance(window.last_message, Finished):
            print(f"run {run} did not finish: {window.last_message}")
            return 1
        if run == 1 or run % 10 == 0:
            samples[run] = rss_mib()
            print(f"after run {run:4d}: RSS {samples[run]:8.1f} MiB", flush=True)
    base, last = samples.get(10, samples[1]), samples[max(samples)]
    print(f"growth from run 10 to run {runs}: {100 * (last - base) / base:+.2f} % "
          f"({last - base:+.1f} MiB); images in {paths.output_dir}")
    window.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--preview", default="auto", choices=("auto", "vae", "fast", "off"))
    parser.add_argument("--model", help="a model file to open instead of the built-in one")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import qasync
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
        code = runner.run(bench(args.runs, args.preview, args.model))
    del app
    return code


if __name__ == "__main__":
    sys.exit(main())
