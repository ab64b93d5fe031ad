"""A multi-line prompt box: Ctrl+Enter asks to generate, Tab moves on, a pasted image is handed
to the window (it becomes the init image) instead of being ignored, and `<lora:` offers the LoRAs
found, completing to A1111's `<lora:name:1>` (the Qt "Custom Completer" example's pattern: the
completer's popup takes Enter, Escape and Tab while it shows)."""

from __future__ import annotations

import re

from PySide6.QtCore import QMimeData, QSize, QStringListModel, Qt, Signal
from PySide6.QtGui import QFocusEvent, QImage, QKeyEvent, QTextCursor
from PySide6.QtWidgets import QCompleter, QPlainTextEdit

# A LoRA tag being typed, up to the cursor: `<lora:` (or A1111's alias `<lyco:`) and the name so far.
LORA_TAG_TYPED = re.compile(r"<(?:lora|lyco):([^:<>]*)$")
POPUP_KEYS = (Qt.Key.Key_Enter, Qt.Key.Key_Return, Qt.Key.Key_Escape, Qt.Key.Key_Tab, Qt.Key.Key_Backtab)


class PromptEdit(QPlainTextEdit):
    submitted = Signal()
    imagePasted = Signal(QImage)
    focused = Signal()

    def __init__(self, placeholder: str, lines: int = 4, parent=None):
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)
        line = self.fontMetrics().lineSpacing()
        self.setMinimumHeight(line * lines + 14)
        self.setMaximumHeight(line * (lines * 2) + 14)
        self.lora_names = QStringListModel(self)
        self.completer = QCompleter(self.lora_names, self)
        self.completer.setWidget(self)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)    # "detail" finds "add_detail_v2"
        self.completer.setMaxVisibleItems(10)
        self.completer.activated[str].connect(self.complete_lora)

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.minimumHeight())

    def set_lora_names(self, names: list[str]) -> None:
        self.lora_names.setStringList(sorted(names, key=str.casefold))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.completer.popup().isVisible() and event.key() in POPUP_KEYS:
            event.ignore()      # the popup's own key handling chooses (or closes)
            return
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)
        self._offer_loras()

    def focusInEvent(self, event: QFocusEvent) -> None:
        super().focusInEvent(event)
        self.focused.emit()

    def _typed_lora(self) -> str | None:
        """The name typed so far after `<lora:` before the cursor, or None outside such a tag."""
        cursor = self.textCursor()
        before = cursor.block().text()[:cursor.positionInBlock()]
        match = LORA_TAG_TYPED.search(before)
        return match.group(1) if match else None

    def _offer_loras(self) -> None:
        popup = self.completer.popup()
        typed = self._typed_lora()
        if typed is None or not self.lora_names.rowCount():
            popup.hide()
            return
        self.completer.setCompletionPrefix(typed)
        if self.completer.completionCount() == 0:
            popup.hide()
            return
        popup.setCurrentIndex(self.completer.completionModel().index(0, 0))
        rect = self.cursorRect()
        rect.setWidth(popup.sizeHintForColumn(0) + popup.verticalScrollBar().sizeHint().width() + 16)
        self.completer.complete(rect)

    def complete_lora(self, name: str) -> None:
        """Replace the name typed after `<lora:` with `name:1>` (A1111's weight 1 written out, so it is
        there to edit)."""
        typed = self._typed_lora()
        if typed is None:
            return
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.Left, QTextCursor.MoveMode.KeepAnchor, len(typed))
        cursor.insertText(f"{name}:1>")
        self.setTextCursor(cursor)

    def insert_word(self, word: str) -> None:
        """`word` at the cursor, set off from the text around it by ", " as prompts are written."""
        cursor = self.textCursor()
        before = cursor.block().text()[:cursor.positionInBlock()]
        kept = before.rstrip()
        cursor.movePosition(QTextCursor.MoveOperation.Left, QTextCursor.MoveMode.KeepAnchor, len(before) - len(kept))
        cursor.insertText(("" if not kept else " " if kept.endswith(",") else ", ") + word)
        self.setTextCursor(cursor)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return source.hasImage() or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if source.hasImage() and not source.hasText():
            image = QImage(source.imageData())
            if not image.isNull():
                self.imagePasted.emit(image)
                return
        super().insertFromMimeData(source)
