"""A one-line progress bar for the command line: steps, it/s and time left (core/eta.py's sum)."""

from __future__ import annotations

import sys
import time

from core.eta import pace


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
        # The time left counts every image's steps, not only this image's.
        speed = pace(self.steps_done, self.total_images * total_steps, time.perf_counter() - self.started)
        filled = round(self.width * (step + 1) / total_steps)
        bar = "#" * filled + "." * (self.width - filled)
        label = f"image {image + 1}/{self.total_images} " if self.total_images > 1 else ""
        label += f"{note} " if note else ""
        self.stream.write(f"\r{label}[{bar}] {step + 1}/{total_steps} {speed.text(separator=' ')} ")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
