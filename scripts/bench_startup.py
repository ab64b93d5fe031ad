"""Time from launch to the window shown, and to the built-in model ready (issue 6).

    python scripts/bench_startup.py [--runs 5] [--frozen dist/LatentDesk/LatentDesk] [--model FILE]

Launches the app `runs` times (from source with this Python, or the frozen executable), each
with --smoke-test under the offscreen platform and a throwaway data folder; the app reports,
relative to the moment this script started it, when its window was first painted and when the
model was ready. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frozen", help="the packaged executable (default: run from source)")
    parser.add_argument("--model", help="open this model instead of the built-in one")
    args = parser.parse_args()

    command = [args.frozen] if args.frozen else [sys.executable, "-m", "app"]
    shown, ready = [], []
    for run in range(1, args.runs + 1):
        data = Path(tempfile.mkdtemp(prefix="latentdesk-startup-"))
        if args.model:
            (data / "settings.ini").write_text(f"[General]\nmodel={Path(args.model).resolve()}\n")
        env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"),
                   LATENTDESK_DATA_DIR=str(data), LATENTDESK_OUTPUT_DIR=str(data / "out"),
                   LATENTDESK_LAUNCHED_AT=repr(time.time()))
        result = subprocess.run([*command, "--smoke-test"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        times = dict(re.findall(r"startup: (.+?) after ([\d.]+) s", result.stdout))
        if result.returncode != 0 or "window shown" not in times:
            print(f"run {run} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}", file=sys.stderr)
            return 1
        shown.append(float(times["window shown"]))
        ready.append(float(times.get("model ready", "nan")))
        print(f"run {run}: window shown {shown[-1]:.2f} s, model ready {ready[-1]:.2f} s", flush=True)
    print(f"{'frozen' if args.frozen else 'source'}: median window shown {statistics.median(shown):.2f} s, "
          f"model ready {statistics.median(ready):.2f} s ({args.runs} runs, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
