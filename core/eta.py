"""Speed and time left, the one sum behind every progress display: the window's status line, the
command line's progress bar and the training log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    rate: float | None     # steps per second so far; None before any step has taken time
    seconds_left: float | None

    def text(self, separator: str = "  ·  ", with_hours: bool = False) -> str:
        """'2.41 it/s · ETA 0:07', or '' before the speed is known.

        Each display keeps its own look: the window's dot, the progress bar's single space, and a
        training log's h:mm:ss (`with_hours`), so its lines keep one width over a run of hours."""
        if self.rate is None:
            return ""
        return f"{self.rate:.2f} it/s{separator}ETA {clock(self.seconds_left, with_hours)}"


def pace(done: int, total: int, elapsed: float) -> Pace:
    """`done` of `total` steps took `elapsed` seconds; the rest is assumed to go at the same speed."""
    if done <= 0 or elapsed <= 0:
        return Pace(None, None)
    rate = done / elapsed
    return Pace(rate, max(0, total - done) / rate)


def clock(seconds: float | None, with_hours: bool = False) -> str:
    """m:ss, or h:mm:ss from an hour (or always, `with_hours`); '-:--' when unknown."""
    if seconds is None:
        return "-:--"
    whole = int(round(seconds))
    hours, minutes, secs = whole // 3600, whole // 60 % 60, whole % 60
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours or with_hours else f"{minutes}:{secs:02d}"
