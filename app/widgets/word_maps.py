"""The word strip under the picture (issue #25): after a run made with "Word maps", one chip per word of the prompt,
then the negative prompt's words, each with its share of the attention. Hovering a chip lays that word's heat map
(core/attention_maps.py) over the picture; leaving it brings the picture back; a click pins the word's map (the chip
stays checked) until it is clicked again. The opacity slider sets how strongly the map covers the picture.

It shows the maps of the history entry on view (app/history.py `viewed`): the last run's first image, or an image
the user clicked in the history strip (whose picture it puts on the main view). A pinned word stays pinned on
another image that has the word, so one word can be compared across images. An image without maps hides the strip;
while a run (or the timeline) shows another picture, the chips are greyed out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLayout,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QToolButton,
    QWidget,
)

from app import theme
from app.jobs import Finished
from app.settings import read
from app.widgets.image_view import ImageView
from app.widgets.timeline import Timeline

if TYPE_CHECKING:   # the window is built before torch (which the maps are made of) is imported
    from app.history import HistoryEntry
    from app.session import Session
    from core.attention_maps import AttentionMaps, WordMap

OPACITY_KEY = "view/word_map_opacity"
DEFAULT_OPACITY = 70            # %, heat_overlay's own default
CHIP_STYLE = (f"QToolButton:checked {{ background: {theme.ACCENT}; border-color: {theme.ACCENT}; color: white; }}"
              "QToolButton { padding: 2px 7px; }")


def share_text(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


class FlowLayout(QLayout):
    """Widgets left to right, wrapping onto the next line (Qt's "Flow Layout" example): every word in sight."""

    def __init__(self, spacing: int = 4):
        super().__init__()
        self._items = []
        self.setSpacing(spacing)
        self.setContentsMargins(0, 0, 0, 0)

    def addItem(self, item) -> None:
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int):
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int):
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._arrange(QRect(0, 0, width, 0), move=False)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._arrange(rect, move=True)

    def sizeHint(self) -> QSize:
        return self.minimumSize()

    def minimumSize(self) -> QSize:
        size = QSize()
        for item in self._items:
            size = size.expandedTo(item.minimumSize())
        return size

    def _arrange(self, rect: QRect, move: bool) -> int:
        """Lay the items out in `rect` (or only measure): the height they take."""
        x, y, line_height, gap = rect.x(), rect.y(), 0, self.spacing()
        for item in self._items:
            hint = item.sizeHint()
            if x + hint.width() > rect.right() + 1 and line_height > 0:
                x, y, line_height = rect.x(), y + line_height + gap, 0
            if move:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width() + gap
            line_height = max(line_height, hint.height())
        return y + line_height - rect.y()


class ChipArea(QScrollArea):
    """The chips, as tall as their lines up to MAX_LINES, scrolling past that (a 75-word prompt)."""

    MAX_HEIGHT = 3 * 30

    def __init__(self, flow: FlowLayout):
        super().__init__()
        self.flow = flow
        inner = QWidget()
        inner.setLayout(flow)
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def fit(self) -> None:
        self.setFixedHeight(max(1, min(self.flow.heightForWidth(self.viewport().width()), self.MAX_HEIGHT)))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit()


class WordChip(QToolButton):
    """One word: hovering it (or tabbing to it) shows its map, a click (or Space) pins it."""

    hovered = Signal(bool)      # True when the pointer comes in, False when it leaves

    def __init__(self, word_map: WordMap, negative: bool, parent=None):
        super().__init__(parent)
        self.word_map, self.negative = word_map, negative
        self.setCheckable(True)
        self.setText(f"{word_map.word}  {share_text(word_map.total)}")
        whose = "the negative prompt's" if negative else "the prompt's"
        self.setToolTip(f"“{word_map.word}”: {word_map.total:.1%} of the attention {whose} words got "
                        f"({len(word_map.tokens)} token{'s' if len(word_map.tokens) != 1 else ''}). "
                        "Hover to see where in the picture; click to pin it.")
        self.setAccessibleName(f"Word map of {word_map.word}")

    @property
    def key(self) -> tuple[str, bool]:
        return self.word_map.word, self.negative

    def enterEvent(self, event) -> None:
        super().enterEvent(event)
        self.hovered.emit(True)

    def leaveEvent(self, event) -> None:
        super().leaveEvent(event)
        self.hovered.emit(False)

    def focusInEvent(self, event) -> None:      # Tab along the words shows each, as hovering does
        super().focusInEvent(event)
        self.hovered.emit(True)

    def focusOutEvent(self, event) -> None:
        super().focusOutEvent(event)
        self.hovered.emit(False)


class WordStrip(QWidget):
    def __init__(self, view: ImageView, timeline: Timeline | None = None, parent=None):
        super().__init__(parent)
        self.view, self.timeline = view, timeline
        self.maps: AttentionMaps | None = None
        self._picture: QImage | None = None     # the picture the maps belong to, as the view shows it
        self._pil = None                        # the same as a PIL image, made when a map is first drawn
        self._overlays: dict[tuple, QImage] = {}
        self._hovered: WordChip | None = None
        self._pinned: tuple[str, bool] | None = None     # (word, negative): kept across images that have the word
        self._entry: HistoryEntry | None = None
        self._run_entry: HistoryEntry | None = None      # the last run's, whose steps the timeline replays
        self.setStyleSheet(CHIP_STYLE)
        # As tall as its chips: the picture above takes the rest (a Preferred height shared the column with it).
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.chip_row = FlowLayout()
        self.scroll = ChipArea(self.chip_row)
        self.opacity = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, value=DEFAULT_OPACITY,
                               accessibleName="Word map opacity", toolTip="How strongly a word's map covers the picture")
        self.opacity.setFixedWidth(110)
        self.opacity.valueChanged.connect(lambda _: self._show_overlay())
        row = QHBoxLayout(self)
        row.setContentsMargins(24, 0, 24, 0)
        row.setSpacing(8)
        row.addWidget(QLabel("Words", objectName="Muted"), 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.scroll, 1)
        row.addWidget(QLabel("Opacity", objectName="Muted"), 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.opacity, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    @classmethod
    def under(cls, run_view) -> WordStrip:
        """A strip for `run_view`'s picture, laid out right under it (above the progress bar)."""
        strip = cls(run_view.image, run_view.timeline)
        column = run_view.layout()
        column.insertWidget(column.indexOf(run_view.pages) + 1, strip)
        return strip

    # -- what is shown -------------------------------------------------------------------------

    def show_maps(self, maps: AttentionMaps | None, picture: QImage | None) -> None:
        """`maps` of `picture` (the one on the view); None, or a picture without maps, hides the strip."""
        self._clear_chips()
        self.maps, self._picture, self._pil, self._overlays = maps, picture, None, {}
        if maps is None or picture is None or not (maps.prompt or maps.negative):
            self.hide()
            return
        for word_map in maps.prompt:
            self._add_chip(word_map, negative=False)
        if maps.negative:
            self.chip_row.addWidget(QLabel("negative:", objectName="Muted"))
            for word_map in maps.negative:
                self._add_chip(word_map, negative=True)
        if self._pinned is not None and self.chip(*self._pinned) is None:
            self._pinned = None         # this image has no such word
        for chip in self.chips():
            chip.setChecked(chip.key == self._pinned)
        self.setEnabled(True)
        self.show()
        self.scroll.fit()
        self._show_overlay()

    def set_waiting(self) -> None:
        """Another picture is on the view (a run's previews, a step of the timeline): no map over it. The pin
        is kept for the next image."""
        self._hovered = None
        self.setEnabled(False)
        if self._picture is not None:
            self.view.set_overlay(None)

    def chips(self) -> list[WordChip]:
        return [w for i in range(self.chip_row.count()) if isinstance(w := self.chip_row.itemAt(i).widget(), WordChip)]

    def chip(self, word: str, negative: bool = False) -> WordChip | None:
        return next((c for c in self.chips() if c.key == (word.lower(), negative)), None)

    def pinned(self) -> tuple[str, bool] | None:
        return self._pinned

    # -- hovering and pinning -------------------------------------------------------------------

    def _add_chip(self, word_map: WordMap, negative: bool) -> None:
        chip = WordChip(word_map, negative)
        chip.hovered.connect(lambda inside, chip=chip: self._hover(chip, inside))
        chip.clicked.connect(lambda _, chip=chip: self._pin(chip))
        self.chip_row.addWidget(chip)

    def _clear_chips(self) -> None:
        self._hovered = None
        while self.chip_row.count():
            widget = self.chip_row.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()

    def _hover(self, chip: WordChip, inside: bool) -> None:
        if inside:
            self._hovered = chip
        elif self._hovered is chip:
            self._hovered = None
        self._show_overlay()

    def _pin(self, chip: WordChip) -> None:
        self._pinned = None if self._pinned == chip.key else chip.key
        for other in self.chips():
            other.setChecked(other.key == self._pinned)
        self._show_overlay()

    def _show_overlay(self) -> None:
        """The hovered word's map, else the pinned word's, else the plain picture."""
        if not self.isEnabled() or self._picture is None:
            return
        chip = self._hovered or (self.chip(*self._pinned) if self._pinned else None)
        self.view.set_overlay(None if chip is None else self.overlay(chip.word_map, chip.negative))

    def overlay(self, word_map: WordMap, negative: bool) -> QImage:
        """The picture with `word_map` over it at the slider's opacity (the last few kept: hovering back and forth
        along the strip draws each once)."""
        # numpy and torch: loaded once maps exist
        from app.word_overlays import qimage_to_pil, word_overlay
        key = (word_map.word, negative, self.opacity.value())
        if key not in self._overlays:
            if self._pil is None:
                self._pil = qimage_to_pil(self._picture)
            if len(self._overlays) >= 16:
                self._overlays.pop(next(iter(self._overlays)))
            self._overlays[key] = word_overlay(self._pil, word_map, self.opacity.value() / 100)
        return self._overlays[key]

    # -- bound to the session ---------------------------------------------------------------------

    def bind(self, session: Session) -> None:
        """Follow the entry on view: a run's result once the run view shows it, a history pick at once (its
        picture put on the view here). Bind after the run view: its jobDone slot puts the result on the view."""
        history = session.image_history
        history.viewChanged.connect(self._viewed)
        session.runStarted.connect(lambda *_: self.set_waiting())
        session.previewShown.connect(lambda _: self.isEnabled() and self.set_waiting())
        session.jobDone.connect(self._run_ended)
        self.opacity.setValue(read(session.settings, OPACITY_KEY, DEFAULT_OPACITY))
        self.opacity.valueChanged.connect(lambda value: session.settings.setValue(OPACITY_KEY, value))
        if self.timeline is not None:
            self.timeline.slider.valueChanged.connect(self._timeline_moved)

    def _viewed(self, entry: HistoryEntry | None, picture: QImage | None) -> None:
        self._entry = entry
        if picture is None:
            self._run_entry = entry      # a run's result: shown when the run view has it (_run_ended)
            return
        self.view.set_image(picture)
        self.show_maps(entry.attention if entry is not None else None, picture)
        if self.timeline is not None:   # it replays the last run: only beside that run's picture, from its end
            self.timeline.setVisible(entry is self._run_entry and self.timeline.frame_count() >= 2)
            if entry is self._run_entry:
                self.timeline.slider.setValue(self.timeline.slider.maximum())

    def _run_ended(self, message) -> None:
        if isinstance(message, Finished):   # else the run's last preview stays on the view: the chips stay grey
            self.show_maps(self._entry.attention if self._entry is not None else None, self.view.image())

    def _timeline_moved(self, index: int) -> None:
        """A step of the run on the view: no map fits it; the final image again: the maps are back."""
        if index < self.timeline.slider.maximum():
            self.set_waiting()
        elif self.maps is not None and self._picture is not None:
            self.setEnabled(True)
            self._show_overlay()
