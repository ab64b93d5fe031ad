"""The denoising timeline: after a run, a slider that replays the preview of every step, then the
final image, so the user can watch how the picture formed (and show a friend)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QWidget


class Timeline(QWidget):
    frameChosen = Signal(QImage)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._frames: list[QImage] = []
        self._steps: list[int] = []          # the step each frame shows (steps without a preview skipped)
        self._total = 0
        self.slider = QSlider(Qt.Orientation.Horizontal, accessibleName="Denoising timeline")
        self.slider.setToolTip("Replay the run step by step (arrow keys move one step)")
        self.slider.setPageStep(1)
        self.label = QLabel(objectName="Caption")
        self.label.setMinimumWidth(90)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(24, 0, 24, 0)
        layout.addWidget(QLabel("Timeline", objectName="Muted"))
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        self.slider.valueChanged.connect(self._moved)
        self.hide()

    def set_run(self, frames, final: QImage | None) -> None:
        """Frames of steps 0..n-1 (None where previews were off) and the final image."""
        self._total = len(frames)
        pairs = [(i, frame) for i, frame in enumerate(frames) if frame is not None]
        if final is not None:
            pairs.append((self._total, final))
        if len(pairs) < 2:
            self.clear()
            return
        self._steps = [i for i, _ in pairs]
        self._frames = [frame for _, frame in pairs]
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self._frames) - 1)
        self.slider.setValue(len(self._frames) - 1)       # the run ends on its final image
        self.slider.blockSignals(False)
        self._label_for(len(self._frames) - 1)
        self.show()

    def clear(self) -> None:
        self._frames, self._steps = [], []
        self.hide()

    def frame_count(self) -> int:
        return len(self._frames)

    def _moved(self, index: int) -> None:
        if 0 <= index < len(self._frames):
            self._label_for(index)
            self.frameChosen.emit(self._frames[index])

    def _label_for(self, index: int) -> None:
        step = self._steps[index]
        self.label.setText("final image" if step == self._total else f"step {step + 1}/{self._total}")
