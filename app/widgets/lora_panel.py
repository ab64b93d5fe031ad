"""The LoRA panel: the LoRAs found in the user's folders (a search box filters them as you type), the
ones added, each with its weight and an on/off switch, and the embeddings found (a click writes one's
name into the prompt, which is how A1111 uses them too).

What is added and switched on becomes `GenerationRequest.loras`; the prompt's own `<lora:name:w>` tags
are the engine's to read (core/text/lora_tags.py) and never touch this panel. Thousands of LoRAs are
common, so the list is a model/view pair (a QStringListModel behind a filtering proxy, rows of one
height): filtering 5,000 names costs a few milliseconds, where a widget per name would cost seconds.
The list opens while a search is typed or when asked (▾), as InvokeAI's LoRA picker does, so the
panel costs one line of the form until it is wanted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from PySide6.QtCore import QSettings, QSortFilterProxyModel, QStringListModel, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.settings import StoredSettings
from app.theme import ACCENT, BACKGROUND, BORDER, DANGER, INPUT, MUTED
from core.loading.lora_limits import MAX_LORAS

SLIDER_LOW, SLIDER_HIGH = -2.0, 2.0     # where LoRAs are used; the box goes further for the odd one that needs it
WEIGHT_LOW, WEIGHT_HIGH = -10.0, 10.0
WEIGHT_STEP = 0.05
MAX_ADDED = MAX_LORAS                   # core/request.py refuses more in one request
SETTINGS_KEY = "form/loras"             # JSON: [[name, weight, on], ...]
LIST_ROWS = 5                           # the found list's height in rows; it scrolls past that
EMBEDDING_ROWS = 2
# The panel's own look, beside app/theme.py's: cards for the added LoRAs (InvokeAI's and Draw Things'
# LoRA lists look so), chips for the embeddings. A weight slider is not filled from its left end:
# its zero is in the middle.
STYLE = f"""
#LoraRow {{ background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 8px; }}
QLabel#LoraName {{ font-weight: 600; }}
#LoraRow QSlider::sub-page:horizontal {{ background: {BORDER}; }}
QLabel#LoraName:disabled {{ color: {MUTED}; }}
QLabel#LoraName[missing="true"] {{ color: {DANGER}; }}
QToolButton#LoraRemove {{ border: none; background: transparent; color: {MUTED}; padding: 2px 6px; }}
QToolButton#LoraRemove:hover {{ color: {DANGER}; }}
QListView#LoraList {{ background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 6px; padding: 2px; }}
QListView#LoraList::item {{ padding: 2px 6px; border-radius: 4px; }}
QListView#LoraList::item:hover {{ background: {INPUT}; }}
QListView#LoraList::item:selected {{ background: {ACCENT}; color: white; }}
QListWidget#EmbeddingChips {{ background: transparent; border: none; }}
QListWidget#EmbeddingChips::item {{ background: {INPUT}; border: 1px solid {BORDER}; border-radius: 9px;
                                    padding: 1px 8px; margin: 1px; }}
QListWidget#EmbeddingChips::item:hover {{ border-color: {ACCENT}; }}
"""


class ElidedLabel(QLabel):
    """A name that ends in "…" when the panel is narrower than it (LoRA names run to 60 characters)."""

    def __init__(self, text: str, **kwargs):
        super().__init__(text, **kwargs)
        self.full_text = text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)   # long names give way

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.setText(self.fontMetrics().elidedText(self.full_text, Qt.TextElideMode.ElideMiddle, self.width()))


class ChipList(QListWidget):
    """Names as chips that wrap, as tall as their rows (at most `most_rows`): a few embeddings take a line."""

    def __init__(self, most_rows: int, **kwargs):
        super().__init__(**kwargs)
        self.most_rows = most_rows
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setSpacing(2)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def fit_height(self) -> None:
        self.doItemsLayout()
        row = self.sizeHintForRow(0) + 2 * self.spacing() if self.count() else 0
        wanted = max(0, min(self.contentsSize().height(), row * self.most_rows))
        self.setFixedHeight(wanted + 2 * self.frameWidth())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self.fit_height()


class LoraRow(QFrame):
    """One added LoRA: on/off and its name, remove; below, the weight as a slider and a number."""

    changed = Signal()
    removeRequested = Signal(object)       # this row

    def __init__(self, name: str, weight: float = 1.0, on: bool = True, parent=None):
        super().__init__(parent, objectName="LoraRow")
        self.name = name
        self.on = QCheckBox(accessibleName=f"Use LoRA {name}", checked=on)
        self.on.setToolTip("Use this LoRA (switched off, it stays in the list)")
        self.label = ElidedLabel(name, objectName="LoraName")
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)   # never squeezed by the scroll
        self.remove = QToolButton(text="✕", objectName="LoraRemove", accessibleName=f"Remove LoRA {name}",
                                  toolTip="Remove this LoRA")
        # The slider counts in WEIGHT_STEPs: a QSlider holds whole numbers only.
        self.slider = QSlider(Qt.Orientation.Horizontal, minimum=round(SLIDER_LOW / WEIGHT_STEP),
                              maximum=round(SLIDER_HIGH / WEIGHT_STEP), accessibleName=f"{name} weight slider")
        self.slider.setMinimumWidth(60)
        self.weight = QDoubleSpinBox(minimum=WEIGHT_LOW, maximum=WEIGHT_HIGH, singleStep=WEIGHT_STEP, decimals=2,
                                     accessibleName=f"{name} weight")
        self.weight.setMaximumWidth(84)
        self.weight.setToolTip(f"Weight: the slider spans {SLIDER_LOW:g} to {SLIDER_HIGH:g}, the box "
                               f"{WEIGHT_LOW:g} to {WEIGHT_HIGH:g}; negative weights push away from the LoRA's style")
        grid = QGridLayout(self)
        grid.setContentsMargins(8, 3, 6, 6)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(0)
        grid.addWidget(self.on, 0, 0)
        grid.addWidget(self.label, 0, 1)
        grid.addWidget(self.remove, 0, 2, Qt.AlignmentFlag.AlignRight)
        grid.addWidget(self.slider, 1, 0, 1, 2)
        grid.addWidget(self.weight, 1, 2)
        grid.setColumnStretch(1, 1)
        self.set_weight(weight)
        self._show_on()
        self.slider.valueChanged.connect(lambda steps: self.weight.setValue(steps * WEIGHT_STEP))
        self.weight.valueChanged.connect(self._weight_typed)
        self.on.toggled.connect(self._show_on)
        self.on.toggled.connect(self.changed)
        self.remove.clicked.connect(lambda: self.removeRequested.emit(self))

    def value(self) -> float:
        return round(self.weight.value(), 2)

    def set_weight(self, weight: float) -> None:
        self.weight.setValue(weight)
        self._weight_typed(self.weight.value())

    def set_missing(self, missing: bool) -> None:
        self.label.setProperty("missing", missing)
        self.label.setToolTip(f"{self.name} is not in your LoRA folders any more" if missing else self.name)
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)

    def _weight_typed(self, weight: float) -> None:
        self.slider.blockSignals(True)      # past the slider's ends it stays at the end; the number rules
        self.slider.setValue(round(max(SLIDER_LOW, min(SLIDER_HIGH, weight)) / WEIGHT_STEP))
        self.slider.blockSignals(False)
        self.changed.emit()

    def _show_on(self) -> None:
        for widget in (self.label, self.slider, self.weight):
            widget.setEnabled(self.on.isChecked())


class LoraPanel(QWidget):
    changed = Signal()              # `loras()` may differ
    embeddingChosen = Signal(str)   # an embedding's name, for the prompt
    rescanRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[LoraRow] = []
        self._available: set[str] = set()
        self._scanned = False           # until the first scan ends, no added LoRA is called missing
        self.names = QStringListModel(self)
        self.filtered = QSortFilterProxyModel(self)
        self.filtered.setSourceModel(self.names)
        self.filtered.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.search = QLineEdit(placeholderText="Search LoRAs…", accessibleName="Search LoRAs",
                                clearButtonEnabled=True)
        self.browse = QToolButton(text="▾", checkable=True, accessibleName="Show the LoRAs found",
                                  toolTip="Show every LoRA found (typing a search shows the matching ones)")
        self.rescan = QToolButton(text="↻", accessibleName="Look for LoRAs again",
                                  toolTip="Look in the LoRA and embedding folders again")
        self.found = QListView(objectName="LoraList", accessibleName="LoRAs found")
        self.found.setModel(self.filtered)
        self.found.setUniformItemSizes(True)        # one row height: no per-row measuring of 5,000 names
        self.found.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.found.setToolTip("Double-click (or Enter) to add a LoRA")
        self.found.setFixedHeight((self.fontMetrics().height() + 6) * LIST_ROWS + 6)
        self.hint = QLabel(objectName="Muted", wordWrap=True)
        self.added = QVBoxLayout()
        self.added.setContentsMargins(0, 0, 0, 0)
        self.added.setSpacing(4)
        self.embeddings_title = QLabel("Embeddings  ·  click to add to the prompt", objectName="Muted")
        self.embeddings = ChipList(EMBEDDING_ROWS, objectName="EmbeddingChips", accessibleName="Embeddings found")
        self.embeddings.setToolTip("Click to write the embedding's name into the prompt you typed in last "
                                   "(the negative prompt for a negative embedding)")
        self._build()
        self.setStyleSheet(STYLE)
        self.search.textChanged.connect(self.filtered.setFilterFixedString)
        self.search.textChanged.connect(self._show_list)
        self.browse.toggled.connect(self._show_list)
        self.search.returnPressed.connect(self._add_current)
        self.found.activated.connect(lambda index: self._add_from_list(index.data()))
        self.rescan.clicked.connect(self.rescanRequested)
        self.embeddings.itemClicked.connect(lambda item: self.embeddingChosen.emit(item.text()))
        self.set_found([], [], scanned=False)

    def _build(self) -> None:
        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(self.search, 1)
        top.addWidget(self.browse)
        top.addWidget(self.rescan)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(5)
        column.addLayout(self.added)
        column.addLayout(top)
        column.addWidget(self.found)
        column.addWidget(self.hint)
        column.addWidget(self.embeddings_title)
        column.addWidget(self.embeddings)

    # -- what was found ------------------------------------------------------------------------

    def set_found(self, loras: Iterable[str], embeddings: Iterable[str], scanned: bool = True) -> None:
        """The LoRAs' and embeddings' names a scan of the folders found (sorted as people read them)."""
        names = sorted(loras, key=str.casefold)
        self._available, self._scanned = set(names), scanned
        self.names.setStringList(names)
        self.search.setPlaceholderText(f"Search {len(names):,} LoRAs…" if names else "Search LoRAs…")
        self._show_list()
        self.embeddings.clear()
        self.embeddings.addItems(sorted(embeddings, key=str.casefold))
        self.embeddings.setVisible(self.embeddings.count() > 0)
        self.embeddings.fit_height()
        self.embeddings_title.setVisible(self.embeddings.count() > 0)
        if not scanned:
            self.hint.setText("Looking for LoRAs…")
        elif not names:
            self.hint.setText("No LoRAs found. Put .safetensors LoRAs in the models folder's loras/ (embeddings: "
                              "embeddings/), or add your A1111 or ComfyUI folder under Model ▸ Get models…")
        self.hint.setVisible(not scanned or not names)
        for row in self.rows:
            row.set_missing(scanned and row.name not in self._available)

    def _show_list(self) -> None:
        self.found.setVisible(self.names.rowCount() > 0 and (self.browse.isChecked() or bool(self.search.text())))
        self.browse.setText("▴" if self.browse.isChecked() else "▾")

    def available(self) -> list[str]:
        return self.names.stringList()

    def shown(self) -> list[str]:
        """The names the search leaves in the list, top to bottom."""
        return [self.filtered.index(i, 0).data() for i in range(self.filtered.rowCount())]

    # -- the LoRAs added -----------------------------------------------------------------------

    def loras(self) -> tuple[tuple[str, float], ...]:
        """The added LoRAs that are on, as GenerationRequest.loras holds them."""
        return tuple((row.name, row.value()) for row in self.rows if row.on.isChecked())

    def add(self, name: str, weight: float = 1.0, on: bool = True) -> LoraRow | None:
        """Add `name` (again: its row is kept, switched on); None when the panel is full."""
        for row in self.rows:
            if row.name == name:
                row.on.setChecked(True)
                return row
        if len(self.rows) >= MAX_ADDED:
            return None
        row = LoraRow(name, weight, on)
        row.set_missing(self._scanned and name not in self._available)
        row.changed.connect(self.changed)
        row.removeRequested.connect(self.remove)
        self.rows.append(row)
        self.added.addWidget(row)
        self.changed.emit()
        return row

    def remove(self, row: LoraRow) -> None:
        self.rows.remove(row)
        self.added.removeWidget(row)
        row.deleteLater()
        self.changed.emit()

    def clear(self) -> None:
        for row in list(self.rows):
            self.remove(row)

    def _add_current(self) -> None:
        """Enter in the search box adds the first LoRA left in the list."""
        index = self.found.currentIndex() if self.found.currentIndex().isValid() else self.filtered.index(0, 0)
        if index.isValid():
            self._add_from_list(index.data())

    def _add_from_list(self, name: str) -> None:
        self.add(name)
        self.search.clear()         # the search is done: the list closes unless it was opened with ▾

    def apply_request(self, loras: tuple[tuple[str, float], ...]) -> list[str]:
        """A restored image's LoRAs become the panel's: those in the folders are added at their weight;
        the others are named, for the message bar (a PNG's values are anyone's: each is checked)."""
        self.clear()
        missing, changed = [], []
        for name, weight in loras:
            if not isinstance(name, str) or not _usable_weight(weight):
                changed.append(f"The LoRA entry {name!r}: {weight!r} is not usable and was left out.")
            elif self._scanned and name not in self._available:
                missing.append(name)
            else:
                self.add(name, float(weight))
        if missing:
            changed.append(f"The image used LoRAs that are not in your folders: {', '.join(missing)}.")
        return changed

    # -- settings ------------------------------------------------------------------------------

    def save(self, settings: QSettings) -> None:
        settings.setValue(SETTINGS_KEY, json.dumps([[row.name, row.value(), row.on.isChecked()]
                                                    for row in self.rows]))

    def restore(self, stored: StoredSettings) -> None:
        """The LoRAs added when the app closed; an unusable saved value leaves the panel empty (and is named)."""
        for name, weight, on in json.loads(stored.get(SETTINGS_KEY, "[]", _usable_saved)):
            self.add(name, weight, on)


def _usable_weight(weight) -> bool:
    return (isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight)
            and WEIGHT_LOW <= weight <= WEIGHT_HIGH)


def _usable_saved(text: str) -> bool:
    """What `save` writes: a JSON list of at most MAX_ADDED [name, weight, on] entries."""
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(entries, list) and len(entries) <= MAX_ADDED and all(
        isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[0]
        and "\0" not in entry[0] and _usable_weight(entry[1]) and isinstance(entry[2], bool) for entry in entries)
