"""The inpainting settings, under the init image's strength: inpainting on or off, how to paint the mask
("Paint mask"), mask blur, masked content, inpaint area (and its padding) and "Extend canvas" for
outpainting. A1111's names and defaults (its img2img inpaint tab); the engine's rules are
core/inpaint.py's. The panel only holds the choice; the session (app/session.py) puts it into the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.init_image_files import InpaintChoice
from core.request import INPAINT_AREAS, MASKED_CONTENT, GenerationRequest

if TYPE_CHECKING:
    from app.session import Session

AREA_LABELS = {"whole": "Whole picture", "masked": "Only masked"}
MAX_BLUR_SHOWN = 64         # px; A1111's slider stops there too (the engine takes up to 256)
EXTEND_MAX, EXTEND_STEP = 512, 64
SIDES = ("left", "top", "right", "bottom")     # outpainting's order (core/request.py `outpaint`)
COMBO_CHARACTERS = 9        # the combo boxes may be this narrow: the panel must fit the controls' column


class InpaintPanel(QWidget):
    changed = Signal()           # the choice changed: the session takes it
    paintRequested = Signal()    # "Paint mask": the window shows the painter

    def __init__(self, parent=None):
        super().__init__(parent)
        defaults = InpaintChoice()
        self.enabled = QCheckBox("Inpaint the masked part")
        self.enabled.setToolTip("Paint over what to change on the picture; the rest is kept exactly")
        self.paint = QPushButton("Paint mask", toolTip="Paint the mask on the picture")
        self.blur = self._spin(0, MAX_BLUR_SHOWN, 1, defaults.mask_blur, "Mask blur",
                               "How many pixels the mask's edge is feathered over")
        self.content = self._combo("Masked content")
        self.content.addItems(list(MASKED_CONTENT))
        self.content.setToolTip("What the masked part starts from: the picture (original), the colours around "
                                "it (fill), or noise; the last two want a strength near 1")
        self.area = self._combo("Inpaint area")
        for value in INPAINT_AREAS:
            self.area.addItem(AREA_LABELS.get(value, value), value)
        self.area.setToolTip("Only masked: the masked part, cut out with padding, is drawn at the full size "
                             "and pasted back (small details get the whole resolution)")
        self.padding = self._spin(0, 256, 8, defaults.padding, "Padding", "Pixels around the mask (Only masked)")
        self.extend = [self._spin(0, EXTEND_MAX, EXTEND_STEP, 0, f"Extend {side}",
                                  f"Outpainting: grow the canvas on the {side} by this many pixels")
                       for side in SIDES]
        self._build()
        self.enabled.toggled.connect(self._show_enabled)
        self.paint.clicked.connect(self.paintRequested)
        self.area.currentIndexChanged.connect(lambda *_: self.padding.setEnabled(self.area.currentData() == "masked"))
        for signal in (self.enabled.toggled, self.blur.valueChanged, self.content.currentIndexChanged,
                       self.area.currentIndexChanged, self.padding.valueChanged,
                       *(box.valueChanged for box in self.extend)):
            signal.connect(self.changed)
        self.padding.setEnabled(False)
        self._show_enabled(False)

    def _combo(self, name: str) -> QComboBox:
        box = QComboBox(accessibleName=name)
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(COMBO_CHARACTERS)
        return box

    def _spin(self, low: int, high: int, step: int, value: int, name: str, tip: str) -> QSpinBox:
        box = QSpinBox(minimum=low, maximum=high, singleStep=step, value=value, accessibleName=name, toolTip=tip)
        box.setSuffix(" px")
        return box

    def _build(self) -> None:
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 4, 0, 0)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(4)
        top = QHBoxLayout()
        top.addWidget(self.enabled, 1)
        top.addWidget(self.paint)
        grid.addLayout(top, 0, 0, 1, 4)
        left, top, right, bottom = self.extend
        extend_tip = "Outpainting: grow the canvas on these sides (then it is inpainted)"
        # Two settings a row, label then field; outpainting's four sides as two rows of the same grid.
        self.details = [QLabel("Content"), self.content, QLabel("Blur"), self.blur,
                        QLabel("Area"), self.area, QLabel("Padding"), self.padding,
                        QLabel("Extend left", toolTip=extend_tip), left, QLabel("right"), right,
                        QLabel("top", toolTip=extend_tip), top, QLabel("bottom"), bottom]
        for i, part in enumerate(self.details):
            grid.addWidget(part, 1 + i // 4, i % 4, Qt.AlignmentFlag.AlignRight if isinstance(part, QLabel)
                           else Qt.AlignmentFlag(0))
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

    def _show_enabled(self, on: bool) -> None:
        """Compact while off: only the switch and "Paint mask" show."""
        for part in self.details:
            part.setVisible(on)

    # -- values in and out ---------------------------------------------------------------------

    def choice(self) -> InpaintChoice:
        return InpaintChoice(self.enabled.isChecked(), self.blur.value(), self.content.currentText(),
                             self.area.currentData(), self.padding.value(),
                             tuple(box.value() for box in self.extend))

    def set_enabled(self, on: bool) -> None:
        self.enabled.setChecked(on)

    def apply_request(self, request: GenerationRequest) -> None:
        """A restored image's inpainting settings (each kept within its control's range)."""
        self.blur.setValue(min(max(int(request.mask_blur), 0), MAX_BLUR_SHOWN))
        if request.masked_content in MASKED_CONTENT:
            self.content.setCurrentText(request.masked_content)
        if (index := self.area.findData(request.inpaint_area)) >= 0:
            self.area.setCurrentIndex(index)
        self.padding.setValue(min(max(int(request.inpaint_padding), 0), self.padding.maximum()))

    def bind(self, session: Session) -> None:
        self.changed.connect(lambda: session.set_inpaint(self.choice()))
        session.maskRead.connect(lambda mask: mask is not None and self.set_enabled(True))
        session.set_inpaint(self.choice())
