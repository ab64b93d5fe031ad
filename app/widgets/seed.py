"""The seed: a number, or a fresh random one every run; a dice button and "reuse last".
Which seed a run gets is decided by the session (app/seeds.py); this box shows and edits it."""

from __future__ import annotations

import re

from PySide6.QtCore import QRegularExpression
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLineEdit, QToolButton, QWidget

from app.seeds import FORM_MAX_SEED, SeedMode, random_seed

SEED_TEXT = re.compile(r"[0-9]{1,10}")     # what the box takes; str.isdigit() also says yes to "²"
_DIGITS = re.compile(r"[0-9]+")


class SeedControl(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.last_used: int | None = None
        self.edit = QLineEdit()
        self.edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}")))
        self.edit.setAccessibleName("Seed")
        self.edit.setPlaceholderText("random")
        self.random = QCheckBox("Random")
        self.random.setToolTip("Draw a new seed for every run")
        self.dice = QToolButton(text="⚄", toolTip="Roll a new seed (and keep it)")
        self.reuse = QToolButton(text="♻", toolTip="Reuse the last seed")
        self.reuse.setEnabled(False)
        self.dice.clicked.connect(lambda: self.set_seed(random_seed()))
        self.reuse.clicked.connect(lambda: self.last_used is not None and self.set_seed(self.last_used))
        self.random.toggled.connect(self._random_toggled)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.dice)
        layout.addWidget(self.reuse)
        layout.addWidget(self.random)
        self.random.setChecked(True)

    def set_seed(self, seed: int) -> None:
        """Fix the seed to `seed` (turns Random off)."""
        self.random.setChecked(False)
        self.edit.setText(str(min(max(int(seed), 0), FORM_MAX_SEED)))

    def show_drawn(self, seed: int) -> None:
        """A seed the session drew for a run: shown, Random left as it is."""
        self.edit.setText(str(seed))

    def mode(self) -> SeedMode:
        if self.random.isChecked():
            return SeedMode.RANDOM
        return SeedMode.TYPED if self.typed() is not None else SeedMode.EMPTY

    def typed(self) -> int | None:
        """The number in the box, within the form's range; None when there is none. (Text set by the
        program may be longer than the validator allows: anything past 10 digits is above the range.)"""
        text = self.edit.text()
        if not _DIGITS.fullmatch(text):
            return None
        return min(int(text), FORM_MAX_SEED) if len(text) <= 10 else FORM_MAX_SEED

    def set_last_used(self, seed: int) -> None:
        self.last_used = seed
        self.reuse.setEnabled(True)
        self.reuse.setToolTip(f"Reuse the last seed ({seed})")

    def _random_toggled(self, on: bool) -> None:
        self.edit.setReadOnly(on)
