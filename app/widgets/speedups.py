"""The approximate speed-ups (core/sampling/speedups.py) as two small spin boxes, deep cache and unguided end,
and a "Half precision (bf16)" check box: the model's networks in bfloat16 (core/precision.py), which reloads the model.

Both start off. The deep cache's other two settings (blocks run on reused steps, the fraction of
first steps run in full) have no box of their own: they keep the engine's tested defaults unless a
restored image or the saved settings say otherwise, and the tooltip shows them.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QCheckBox, QSpinBox, QVBoxLayout, QWidget

from app.settings import StoredSettings, between, one_of
from core.request import GenerationRequest
from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_INTERVAL, DEEP_CACHE_START, GUIDANCE_CUTOFF

MAX_INTERVAL = 10
MAX_CUTOFF_PERCENT = 90
# No UNet we load has more input blocks than SD 1.x/2.x's 12; the engine refuses more than the model's own.
MAX_BLOCKS = 12
PRECISIONS = ("float32", "bfloat16")
AUTO = "auto"           # core.precision.AUTO, not imported: it needs torch, and the window opens before torch
FIELDS = ("deep_cache_interval", "deep_cache_blocks", "deep_cache_start", "guidance_cutoff")


class SpeedupsControl(QWidget):
    valueChanged = Signal()
    precisionChanged = Signal(str)      # "float32" or "bfloat16", the user's choice: the model must be loaded again

    def __init__(self, parent=None):
        super().__init__(parent)
        self.blocks, self.start = DEEP_CACHE_BLOCKS, DEEP_CACHE_START
        # Interval 1 is "the whole UNet every step": exact, so the minimum doubles as "off".
        self.deep_cache = QSpinBox(minimum=1, maximum=MAX_INTERVAL, value=1, prefix="Deep cache 1/",
                                   specialValueText="Deep cache off", accessibleName="Deep cache")
        self.cutoff = QSpinBox(minimum=0, maximum=MAX_CUTOFF_PERCENT, singleStep=10, value=0, suffix=" %",
                               prefix="Unguided last ", specialValueText="Guided to the end",
                               accessibleName="Unguided last steps")
        self.cutoff.setToolTip("Approximate, faster: the last steps run without guidance (one UNet batch instead "
                               f"of two); {GUIDANCE_CUTOFF:.0%} is the tested setting.")
        self.half = QCheckBox("Half precision (bf16)", accessibleName="Half precision (bfloat16)")
        self.half.setToolTip("Approximate, faster: the model's networks in bfloat16 (about 3x faster for SD1.5 on "
                             "CPUs with AMX, half the memory; the image changes slightly). Reloads the model. Until "
                             "you choose, it is on for full-size models where this CPU runs bfloat16 faster.")
        # "auto" until the user ticks or unticks the box (core/precision.py automatic_precision); the box then
        # shows what the loaded model runs in.
        self.precision_choice = AUTO
        # One control a line: side by side, the two spin boxes' longest texts ("Unguided last 90 %") in the
        # theme's padding needed 359 px, and the panel's content overflowed its 412 px on the right.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.deep_cache)
        layout.addWidget(self.cutoff)
        layout.addWidget(self.half)
        self.deep_cache.valueChanged.connect(self.valueChanged)
        self.cutoff.valueChanged.connect(self.valueChanged)
        self.half.toggled.connect(self._chosen)
        self._show_details()

    def read_into(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with the speed-up fields this control holds."""
        return replace(request, deep_cache_interval=self.deep_cache.value(), deep_cache_blocks=self.blocks,
                       deep_cache_start=self.start, guidance_cutoff=self.cutoff.value() / 100)

    def set_values(self, deep_cache_interval: int, deep_cache_blocks: int, deep_cache_start: float,
                   guidance_cutoff: float) -> None:
        self.blocks, self.start = deep_cache_blocks, deep_cache_start
        self.deep_cache.setValue(deep_cache_interval)
        self.cutoff.setValue(round(guidance_cutoff * 100))
        self._show_details()

    def precision(self) -> str:
        """The user's choice: "float32", "bfloat16", or "auto" while they have made none."""
        return self.precision_choice

    def _chosen(self, on: bool) -> None:
        self.precision_choice = "bfloat16" if on else "float32"
        self.precisionChanged.emit(self.precision_choice)

    def show_precision(self, running: str) -> None:
        """What the loaded model runs in (under "auto", what was chosen for it), without choosing anything."""
        self.half.blockSignals(True)
        self.half.setChecked(running == "bfloat16")
        self.half.blockSignals(False)

    def apply_request(self, request: GenerationRequest) -> list[str]:
        """A restored request's speed-ups; one out of range (a crafted PNG) keeps the default, and is named."""
        defaults, limits, changed, values = GenerationRequest(), self._limits(), [], []
        for field in FIELDS:
            value = getattr(request, field)
            if not isinstance(value, int | float) or isinstance(value, bool) or not limits[field](value):
                changed.append(f"{field.replace('_', ' ').capitalize()} {value} is not usable; the default is kept.")
                value = getattr(defaults, field)
            values.append(value)
        self.set_values(*values)
        return changed

    @staticmethod
    def _limits() -> dict:
        return {"deep_cache_interval": between(1, MAX_INTERVAL), "deep_cache_blocks": between(1, MAX_BLOCKS),
                "deep_cache_start": lambda value: 0 <= value < 1,
                "guidance_cutoff": between(0, MAX_CUTOFF_PERCENT / 100)}

    def save(self, settings: QSettings) -> None:
        held = self.read_into(GenerationRequest())
        for field in FIELDS:
            settings.setValue(f"form/{field}", getattr(held, field))
        settings.setValue("form/precision", self.precision_choice)

    def restore(self, stored: StoredSettings) -> None:
        """The saved values, each checked (app/settings.py StoredSettings): an unusable one keeps its default."""
        defaults, limits = GenerationRequest(), self._limits()
        self.set_values(*(stored.get(f"form/{field}", getattr(defaults, field), limits[field]) for field in FIELDS))
        # Set before the first model loads (which reads it), so no reload is asked for.
        self.precision_choice = stored.get("form/precision", AUTO, one_of((*PRECISIONS, AUTO)))
        self.show_precision(self.precision_choice)

    def _show_details(self) -> None:
        self.deep_cache.setToolTip(
            f"Approximate, faster: after the first {self.start:.0%} of the steps, the whole UNet runs on one step "
            f"in N; the others run its {self.blocks} shallowest block(s) and reuse the rest (DeepCache). "
            f"1/{DEEP_CACHE_INTERVAL} is the tested setting.")
