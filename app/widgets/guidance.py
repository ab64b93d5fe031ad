"""The guidance slider: 1–20 in steps of 0.5, the value shown, a reset to the model's default.

It acts live: the window forwards every change to the running job's GuidanceScale.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

STEPS_PER_UNIT = 2      # 0.5 per slider tick
LOW, HIGH = 1.0, 20.0


class GuidanceControl(QWidget):
    valueChanged = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._default = 7.0
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(int(LOW * STEPS_PER_UNIT), int(HIGH * STEPS_PER_UNIT))
        self.slider.setPageStep(STEPS_PER_UNIT)
        self.slider.setAccessibleName("Guidance scale")
        self.slider.setToolTip("How strongly the image follows the prompt (classifier-free guidance).\n"
                               "Acts live: moving it during a run changes the next steps.")
        self.label = QLabel(objectName="GuidanceValue")
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.reset = QToolButton(text="↺")
        self.reset.clicked.connect(lambda: self.setValue(self._default))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        layout.addWidget(self.reset)
        self.slider.valueChanged.connect(self._changed)
        self.setValue(self._default)

    def value(self) -> float:
        return self.slider.value() / STEPS_PER_UNIT

    def setValue(self, value: float) -> None:
        value = min(max(float(value), LOW), HIGH)
        self.slider.setValue(round(value * STEPS_PER_UNIT))
        self._show()

    def setDefault(self, value: float) -> None:
        self._default = float(value)
        self.reset.setToolTip(f"Reset to the model's default ({self._default:g})")

    def _changed(self, _ticks: int) -> None:
        self._show()
        self.valueChanged.emit(self.value())

    def _show(self) -> None:
        self.label.setText(f"{self.value():g}")
