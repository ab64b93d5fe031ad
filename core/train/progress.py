"""What a run tells as it goes: a progress line per report on stderr, and `loss.jsonl`.

The line's speed and time left come from core/eta.py, the sum the window and the command line's
progress bar use too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from core.eta import pace

LOSS_LOG = "loss.jsonl"


class Progress:
    """One line per report on stderr: step, loss, it/s and time left (log files stay readable)."""

    def __init__(self, name: str, total: int, start: int, stream=None):
        self.name, self.total, self.start = name, total, start
        self.stream = sys.stderr if stream is None else stream
        self.started = time.perf_counter()

    def update(self, step: int, stats: Mapping[str, float]) -> None:
        # The speed of this run only: steps before `start` were done by an earlier, resumed-from run.
        speed = pace(step - self.start, self.total - self.start, time.perf_counter() - self.started)
        numbers = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self.stream.write(f"{self.name} step {step}/{self.total}  {numbers}  "
                          f"{speed.text(separator='  ', with_hours=True)}\n")
        self.stream.flush()


class LossLog:
    """`loss.jsonl`: one JSON object per report. Lines past a resumed step (logged after the last
    checkpoint of an interrupted run) are dropped, so the log matches the weights."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if (record := _record(line)) is not None and record["step"] <= resumed_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _record(line: str) -> dict | None:
    """A loss-log line, or None for the half-written last line of a killed run."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None
