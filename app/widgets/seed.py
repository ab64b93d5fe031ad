"""The seed: a number, or a fresh random one every run; a dice button and "reuse last"."""

from __future__ import annotations

import re
import secrets

from PySide6.QtCore import QRegularExpression
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLineEdit, QToolButton, QWidget

MAX_SEED = 2**32 - 1     # A1111's range; image i of a batch uses seed + i
SEED_TEXT = re.compile(r"[0-9]{1,10}")     # what the box takes; str.isdigit() also says yes to "²"


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


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
        self.edit.setText(str(min(max(int(seed), 0), MAX_SEED)))

    def seed_for_run(self) -> int:
        """The seed the next run uses; in Random mode a new one, shown in the box."""
        if self.random.isChecked() or not self.edit.text():
            seed = random_seed()
            self.edit.setText(str(seed))
            return seed
        return min(int(self.edit.text()), MAX_SEED)

    def set_last_used(self, seed: int) -> None:
        self.last_used = seed
        self.reuse.setEnabled(True)
        self.reuse.setToolTip(f"Reuse the last seed ({seed})")

    def _random_toggled(self, on: bool) -> None:
        self.edit.setReadOnly(on)
