"""The loaded model's type, Standard or a few-step kind (core/presets.py), with the settings it takes.

Shown beside the other settings: what Latent Desk detected and from what (the tooltip), and the user's
correction ("This is a Turbo model") when a file's name and metadata do not say. A choice is kept per
model by the session (app/model_presets.py); picking a type applies its sampler, schedule, steps and
guidance at once, as the model's makers recommend.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox

from app.model_presets import STANDARD, kinds  # noqa: F401 (STANDARD: the controls name it)

DETECTED_TIP = "Few-step models (Turbo, Lightning, Hyper-SD, LCM) need their own sampler, steps and no guidance."


class ModelTypeBox(QComboBox):
    chosen = Signal(str)        # the user picked a type: "standard" or a preset kind

    def __init__(self, parent=None):
        super().__init__(parent, accessibleName="Model type")
        for kind, title in kinds():
            self.addItem(title, kind)
        self.activated.connect(lambda index: self.chosen.emit(self.itemData(index)))
        self.setToolTip(DETECTED_TIP)

    def show_type(self, kind: str, source: str) -> None:
        """The type in force for the loaded model, and what said so ("the file's name", "you", ...)."""
        self.blockSignals(True)
        self.setCurrentIndex(max(0, self.findData(kind)))
        self.blockSignals(False)
        said = f"Detected from {source}." if source and source != "you" else "Your choice for this model."
        self.setToolTip(DETECTED_TIP if kind == STANDARD and not source else f"{said} {DETECTED_TIP}")
