"""A non-blocking message strip at the top of the window: text, optional action buttons, a close
button. Used instead of modal dialogs so the user (and the tests) can carry on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton


class MessageBar(QFrame):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MessageBar")
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(12, 6, 6, 6)
        self._layout.addWidget(self._label, 1)
        self._buttons: list[QPushButton] = []
        close = QToolButton(text="✕", toolTip="Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        self._layout.addWidget(close)
        self.hide()

    def show_message(self, text: str, kind: str = "info",
                     actions: Sequence[tuple[str, Callable[[], None]]] = ()) -> None:
        """kind: "info" | "warning" | "error". Each action's button also dismisses the bar."""
        for button in self._buttons:
            button.deleteLater()
        self._buttons = []
        for label, callback in actions:
            button = QPushButton(label)
            button.clicked.connect(lambda _=False, cb=callback: (self.dismiss(), cb()))
            self._layout.insertWidget(self._layout.count() - 1, button)
            self._buttons.append(button)
        self._label.setText(text)
        self.setProperty("kind", kind)
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()

    def dismiss(self) -> None:
        self.hide()

    def text(self) -> str:
        return "" if self.isHidden() else self._label.text()

    @property
    def kind(self) -> str:
        return self.property("kind") or ""

    def button(self, label: str) -> QPushButton | None:
        return next((b for b in self._buttons if b.text() == label), None)
