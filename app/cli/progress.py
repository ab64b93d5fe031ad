"""A one-line progress bar for the command line: steps, it/s and time left."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Redraws one line on stderr; silent where there is no stderr (a windowed app)."""

    def __init__(self, total_images: int, stream=None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.total_images = total_images
        self.width = width
        self.started = time.perf_counter()
        self.steps_done = 0

    def update(self, image: int, step: int, total_steps: int, note: str = "") -> None:
        """`image` and `step` count from 0; call after each step."""
        self.steps_done += 1
        if self.stream is None:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.steps_done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total_images * total_steps - self.steps_done) / rate if rate else 0.0
        filled = round(self.width * (step + 1) / total_steps)
        bar = "#" * filled + "." * (self.width - filled)
        label = f"image {image + 1}/{self.total_images} " if self.total_images > 1 else ""
        label += f"{note} " if note else ""
        self.stream.write(f"\r{label}[{bar}] {step + 1}/{total_steps} {rate:.2f} it/s "
                          f"ETA {int(remaining) // 60}:{int(remaining) % 60:02d} ")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
