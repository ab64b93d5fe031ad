"""The left-hand panel: everything a request is made of, top to bottom in the order people
decide it (model, prompt, guidance, LoRAs, steps, size, seed, speed-ups, init image), Generate/Cancel pinned at
the bottom. It reads and writes `GenerationRequest` fields; it never touches the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.jobs import PreviewMode, ReadyModel
from app.models import tiny_decoder_note
from app.settings import StoredSettings
from app.widgets.form_memory import restore_form, save_form
from app.widgets.guidance import GuidanceControl
from app.widgets.init_image import InitImageWell
from app.widgets.lora_panel import LoraPanel
from app.widgets.model_picker import ModelPicker
from app.widgets.model_type import STANDARD, ModelTypeBox
from app.widgets.prompt_edit import PromptEdit
from app.widgets.seed import SeedControl
from app.widgets.size_presets import MAX_SIDE, MIN_SIDE, RATIOS, SIZE_STEP, round8, size_presets
from app.widgets.speedups import SpeedupsControl
from core.request import GenerationRequest
from core.sampling.sampler_names import AUTOMATIC, SAMPLER_NAMES, SCHEDULE_NAMES

if TYPE_CHECKING:   # the window is built before torch (which core.families needs) is imported
    from pathlib import Path

    from PySide6.QtGui import QImage

    from app.session import Session
    from core.families import Family


DRAFT_TIP = ("Draw the final image with the tiny decoder (TAESD): a draft in a fraction of the VAE's time. "
             "Needs taesd_decoder.safetensors (taesdxl for SDXL) beside the model or in the models folder")
WORD_MAPS_TIP = "After the run, hover a word under the picture to see where it was listened to (a little slower)"


def section(title: str) -> QLabel:
    return QLabel(title.upper(), objectName="SectionTitle")


NEGATIVE_UNUSED = "Negative prompt not used: this model learnt its guidance (LCM), it sees the prompt and the scale"


class ControlsPanel(QFrame):
    edited = Signal()          # the user changed a setting that changes the picture (Live mode listens)
    changed = Signal()         # any field of `request()` may differ: the session takes the form again

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("Controls")
        self.model_picker = ModelPicker()
        self.model_info = QLabel(objectName="Muted")
        self.prompt = PromptEdit("Describe the image…  (Ctrl+Enter to generate)", lines=3)
        self.prompt.setAccessibleName("Prompt")
        self.negative = PromptEdit("What to avoid (optional)", lines=2)
        self.negative.setAccessibleName("Negative prompt")
        self.negative_unused = QLabel(NEGATIVE_UNUSED, objectName="Muted", wordWrap=True, visible=False)
        self.guidance = GuidanceControl()
        self.loras = LoraPanel()
        self._embeddings_go_to = self.prompt    # the prompt box typed in last: a click on an embedding goes there
        self.steps = QSpinBox(minimum=1, maximum=150, value=20, accessibleName="Steps")
        self.sampler = QComboBox(accessibleName="Sampler")
        self.sampler.addItems(list(SAMPLER_NAMES))
        self.sampler.setCurrentText(GenerationRequest().sampler)
        self.schedule = QComboBox(accessibleName="Schedule")
        self.schedule.addItems(list(SCHEDULE_NAMES))
        self.schedule.setToolTip("The noise levels the sampler steps through (A1111's schedule type). Automatic: "
                                 "the sampler's own; SGM Uniform: 1-step SD-Turbo and other distilled models")
        self.size_preset = QComboBox(accessibleName="Size preset")
        self.width = QSpinBox(minimum=MIN_SIDE, maximum=MAX_SIDE, singleStep=SIZE_STEP, value=512,
                              accessibleName="Width", suffix=" px")
        self.height = QSpinBox(minimum=MIN_SIDE, maximum=MAX_SIDE, singleStep=SIZE_STEP, value=512,
                               accessibleName="Height", suffix=" px")
        self.batch = QSpinBox(minimum=1, maximum=16, value=1, accessibleName="Images per run")
        self.model_type = ModelTypeBox()
        self.draft = QCheckBox("Draft", enabled=False, toolTip=DRAFT_TIP)
        self.word_maps = QCheckBox("Word maps", toolTip=WORD_MAPS_TIP)
        self.seed = SeedControl()
        self.speedups = SpeedupsControl()
        self.init_well = InitImageWell()
        self.preview_mode = QComboBox(accessibleName="Preview")
        for mode in PreviewMode:
            self.preview_mode.addItem(mode.label, mode.value)
        self.preview_noisy = QCheckBox("Show noisy latent")
        self.preview_noisy.setToolTip("Show the noisy image the sampler holds instead of its clean prediction")
        self.generate_button = QPushButton("Generate", objectName="Generate", toolTip="Generate (Ctrl+Enter)")
        self.cancel_button = QPushButton("Cancel", objectName="Cancel", toolTip="Cancel (Esc)", enabled=False)
        self._presets: list[tuple[int, int]] = []

        self.size_preset.activated.connect(self._preset_chosen)
        self.width.valueChanged.connect(self._size_edited)
        self.height.valueChanged.connect(self._size_edited)
        self.width.editingFinished.connect(lambda: self._snap(self.width))
        self.height.editingFinished.connect(lambda: self._snap(self.height))
        self._build()
        self.set_family(512, 7.0)

    def _build(self) -> None:
        form = QWidget()
        column = QVBoxLayout(form)
        column.setContentsMargins(14, 6, 12, 8)
        column.setSpacing(5)
        column.addWidget(section("Prompt"))
        column.addWidget(self.prompt)
        column.addWidget(self.negative)
        column.addWidget(self.negative_unused)
        column.addWidget(section("Guidance"))
        column.addWidget(self.guidance)
        column.addWidget(section("LoRAs"))
        column.addWidget(self.loras)

        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        grid.addWidget(QLabel("Steps"), 0, 0)
        grid.addWidget(self.steps, 0, 1)
        grid.addWidget(QLabel("Images"), 0, 2, Qt.AlignmentFlag.AlignRight)
        grid.addWidget(self.batch, 0, 3)
        grid.addWidget(QLabel("Sampler"), 1, 0)
        grid.addWidget(self.sampler, 1, 1, 1, 3)
        grid.addWidget(QLabel("Schedule"), 2, 0)      # under the sampler: both names fit whole
        grid.addWidget(self.schedule, 2, 1, 1, 3)
        grid.addWidget(QLabel("Size"), 3, 0)
        grid.addWidget(self.size_preset, 3, 1, 1, 3)
        sides = QHBoxLayout()
        sides.addWidget(self.width, 1)
        sides.addWidget(QLabel("×"))
        sides.addWidget(self.height, 1)
        grid.addLayout(sides, 4, 1, 1, 3)
        grid.addWidget(QLabel("Seed"), 5, 0)
        grid.addWidget(self.seed, 5, 1, 1, 3)
        grid.addWidget(QLabel("Speed"), 6, 0)
        grid.addWidget(self.speedups, 6, 1, 1, 3)
        grid.addWidget(QLabel("Type"), 7, 0)
        grid.addWidget(self.model_type, 7, 1, 1, 2)
        grid.addWidget(self.draft, 7, 3)
        grid.addWidget(self.word_maps, 8, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        column.addWidget(section("Settings"))
        column.addLayout(grid)
        column.addWidget(section("Start from an image"))
        column.addWidget(self.init_well)
        column.addStretch(1)

        scroll = QScrollArea(objectName="ControlsScroll")
        scroll.setWidget(form)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(14, 8, 14, 12)
        buttons.addWidget(self.generate_button, 3)
        buttons.addWidget(self.cancel_button, 1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(scroll, 1)
        outer.addLayout(buttons)
        self.setMinimumWidth(400)
        self.setMaximumWidth(560)
        self.live = QCheckBox("Live")
        self.live.setToolTip("Regenerate as you type or move a slider (the seed stays the same)")
        self.toolbar = self._build_toolbar()
        for signal in (self.prompt.textChanged, self.negative.textChanged, self.guidance.valueChanged,
                       self.steps.valueChanged, self.sampler.currentIndexChanged,
                       self.schedule.currentIndexChanged, self.width.valueChanged,
                       self.height.valueChanged, self.seed.edit.textEdited, self.init_well.strength.valueChanged,
                       self.speedups.valueChanged, self.loras.changed, self.draft.toggled):
            signal.connect(self.edited)
        # Every field, however set (typing, a restored PNG, a drawn seed, the init image): the session
        # must never generate from a stale copy of the form.
        for signal in (self.prompt.textChanged, self.negative.textChanged, self.guidance.valueChanged,
                       self.steps.valueChanged, self.sampler.currentIndexChanged,
                       self.schedule.currentIndexChanged, self.width.valueChanged,
                       self.height.valueChanged, self.batch.valueChanged, self.seed.edit.textChanged,
                       self.seed.random.toggled, self.init_well.strength.valueChanged,
                       self.init_well.pathChanged, self.speedups.valueChanged, self.loras.changed,
                       self.draft.toggled):
            signal.connect(self.changed)
        for box in (self.prompt, self.negative):
            box.focused.connect(lambda box=box: setattr(self, "_embeddings_go_to", box))
        self.loras.embeddingChosen.connect(lambda name: self._embeddings_go_to.insert_word(name))

    def _build_toolbar(self) -> QWidget:
        """The strip above everything: the model (what every setting depends on) and the preview.
        Laid out by the window; owned here so that saving and restoring stay in one place."""
        bar = QWidget(objectName="TopBar")
        row = QHBoxLayout(bar)
        row.setContentsMargins(14, 8, 14, 8)
        row.setSpacing(8)
        row.addWidget(QLabel("Latent Desk", objectName="AppTitle"))
        row.addSpacing(18)
        row.addWidget(QLabel("Model"))
        self.model_picker.setMinimumWidth(190)
        row.addWidget(self.model_picker)
        # The description gives way first when the window is narrow.
        self.model_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        row.addWidget(self.model_info, 1)
        row.addWidget(self.live)
        row.addSpacing(8)
        row.addWidget(QLabel("Preview"))
        row.addWidget(self.preview_mode)
        row.addWidget(self.preview_noisy)
        return bar

    # -- bound to the session ----------------------------------------------------------------

    def bind(self, session: Session) -> None:
        """The form pushed into the session whenever it changes, the buttons and live controls to its
        actions, and what it reports (a model in, a seed drawn, a run going) shown here."""
        self.changed.connect(lambda: session.set_form(self.request(), self.seed.mode()))
        for start in (self.generate_button.clicked, self.prompt.submitted, self.negative.submitted):
            start.connect(lambda *_: session.generate())
        self.cancel_button.clicked.connect(session.cancel)
        for pasted in (self.prompt.imagePasted, self.negative.imagePasted, self.init_well.imageDropped):
            pasted.connect(session.use_image_data)
        self.init_well.filesDropped.connect(session.drop_paths)
        self.guidance.valueChanged.connect(session.set_guidance)
        self.edited.connect(session.live.edited)
        self.live.toggled.connect(session.live.set_enabled)
        self.preview_mode.currentIndexChanged.connect(lambda *_: session.set_preview_choice(*self.preview_choice()))
        self.preview_noisy.toggled.connect(lambda *_: session.set_preview_choice(*self.preview_choice()))
        self.speedups.precisionChanged.connect(session.change_precision)
        self.word_maps.toggled.connect(session.set_word_maps)
        self.model_picker.modelChosen.connect(session.open_model)
        self.model_picker.retryRequested.connect(session.open_model)
        session.modelReady.connect(self.show_model)
        session.presetChanged.connect(self.show_preset)
        self.model_type.chosen.connect(session.choose_model_type)
        session.current_model.failed.connect(lambda spec, _: self._show_failed(spec, session.model))
        session.seedDrawn.connect(self.seed.show_drawn)
        session.runStarted.connect(lambda request, _: (self.seed.set_last_used(request.seed), self.set_busy(True)))
        session.jobDone.connect(lambda _: self.set_busy(False))
        session.initImageRead.connect(self.show_init_image)
        session.model_folders.addons_found.connect(self.show_addons)
        self.loras.rescanRequested.connect(session.model_folders.scan)
        # What was restored without signals (the precision: asking for no reload) goes in once.
        session.set_form(self.request(), self.seed.mode())
        session.set_preview_choice(*self.preview_choice())
        session.set_word_maps(self.word_maps.isChecked())
        session.current_model.precision = self.speedups.precision()

    def _show_failed(self, spec: str, ready: ReadyModel | None) -> None:
        self.model_picker.set_failed(spec)      # offers "Try again"
        self.model_picker.set_current(ready.spec if ready else None)

    def show_addons(self, loras: list[str], embeddings: list[str]) -> None:
        """A scan of the folders found these LoRAs and embeddings (names): the panel lists them, the
        prompt box completes `<lora:` with them."""
        self.loras.set_found(loras, embeddings)
        self.prompt.set_lora_names(loras)

    def show_init_image(self, path: Path, thumb: QImage, width: int, height: int) -> None:
        self.init_well.set_image(path, thumb)
        self.width.setValue(width)
        self.height.setValue(height)

    # -- model defaults ----------------------------------------------------------------------

    def set_family(self, native_size: int, default_guidance: float) -> None:
        """Size presets and the guidance reset value for the loaded model's family."""
        self._presets = size_presets(native_size)
        self.size_preset.blockSignals(True)
        self.size_preset.clear()
        for i, (w, h) in enumerate(self._presets):
            ratio = "draft" if i == len(self._presets) - 1 else f"{RATIOS[i][0]}:{RATIOS[i][1]}"
            self.size_preset.addItem(f"{w} × {h}  ·  {ratio}", f"{w}x{h}")
        self.size_preset.addItem("Custom", None)
        self.size_preset.blockSignals(False)
        self.guidance.setDefault(default_guidance)
        self._size_edited()

    def show_model(self, ready: ReadyModel, apply_defaults: bool, live_on: bool) -> None:
        """A model is in: its family's sizes and guidance default (and, when asked, its other defaults),
        the Live choice for it, and what it is."""
        diffusion, family = ready.diffusion, ready.diffusion.family
        self.model_picker.set_failed(None)
        self.set_family(family.default_size, family.default_guidance)
        self.live.setChecked(live_on)
        if apply_defaults:
            self.apply_family_defaults(family)
        self.model_picker.set_current(ready.spec)
        self.model_info.setText(f"{family.title} · predicts {diffusion.prediction} · {family.default_size}px native")
        self.draft.setEnabled(ready.preview_decoder is not None)
        from core.generate import embedded_guidance  # a model is in: the engine (torch) is loaded already
        from core.precision import precision_name
        self.speedups.show_precision(precision_name(diffusion) or "float32")
        # An LCM model never sees a negative prompt: the box rests, keeping its text, and a line says why.
        learnt = embedded_guidance(diffusion)
        self.negative.setEnabled(not learnt)
        self.negative_unused.setVisible(learnt)
        self.preview_mode.setToolTip(tiny_decoder_note(ready))

    def show_preset(self, preset, source: str, family: Family | None) -> None:
        """The model's type is in (or the user chose one): its sampler, schedule, steps and guidance, as its
        makers recommend; a Standard model gets its family's defaults back (none when `family` is None)."""
        self.model_type.show_type(preset.kind if preset else STANDARD, source)
        if preset is None:
            if family is not None:
                self.apply_family_defaults(family)
            return
        self.sampler.setCurrentText(preset.sampler)
        self.schedule.setCurrentText(preset.schedule)
        self.steps.setValue(preset.steps)
        self.guidance.setValue(preset.guidance)

    def apply_family_defaults(self, family: Family) -> None:
        """The model's own steps, guidance, sampler and size: for a first start or a new family."""
        self.steps.setValue(family.default_steps)
        self.guidance.setValue(family.default_guidance)
        if family.default_sampler in SAMPLER_NAMES:
            self.sampler.setCurrentText(family.default_sampler)
            self.schedule.setCurrentText(AUTOMATIC)    # the sampler's own, as the model's makers chose it
        self.width.setValue(family.default_size)
        self.height.setValue(family.default_size)

    # -- values in and out -------------------------------------------------------------------

    def request(self) -> GenerationRequest:
        """What the form holds, as the request it asks for. The seed is the box's number (0 when it is
        empty; `seed.mode()` says whether a run draws its own); the model is the session's to fill in."""
        init = self.init_well.path
        request = GenerationRequest(
            prompt=self.prompt.toPlainText().strip(), negative_prompt=self.negative.toPlainText().strip(),
            steps=self.steps.value(), guidance=self.guidance.value(), sampler=self.sampler.currentText(),
            schedule=self.schedule.currentText(),
            seed=self.seed.typed() or 0, width=self.width.value(), height=self.height.value(),
            batch=self.batch.value(), init_image=str(init) if init else None,
            strength=self.init_well.strength_value(), loras=self.loras.loras(),
            decoder="taesd" if self.draft.isChecked() and self.draft.isEnabled() else "vae")
        return self.speedups.read_into(request)

    def apply_request(self, request: GenerationRequest) -> list[str]:
        """Show a request's settings (restored from a PNG or the history). The seed is fixed to it.

        A PNG's numbers are anyone's: each is brought into its control's range (a spin box raises
        above 2³¹), and what was changed comes back in words for the user."""
        changed = []

        def within(name: str, box, value) -> int:
            low, high = box.minimum(), box.maximum()
            if not isinstance(value, int) or not low <= value <= high:
                kept = min(max(value, low), high) if isinstance(value, int) else box.value()
                changed.append(f"{name} {value} is outside {low}–{high}; {kept} is used.")
                return kept
            return value

        self.prompt.setPlainText(request.prompt)
        self.negative.setPlainText(request.negative_prompt)
        self.guidance.setValue(request.guidance)
        self.steps.setValue(within("Steps", self.steps, request.steps))
        if self.sampler.findText(request.sampler) >= 0:
            self.sampler.setCurrentText(request.sampler)
        if self.schedule.findText(request.schedule) >= 0:
            self.schedule.setCurrentText(request.schedule)
        self.width.setValue(within("Width", self.width, request.width))
        self.height.setValue(within("Height", self.height, request.height))
        self.seed.set_seed(request.seed)
        self.init_well.set_strength(request.strength)
        self.draft.setChecked(request.decoder == "taesd")
        changed += self.speedups.apply_request(request)
        changed += self.loras.apply_request(request.loras)
        self.changed.emit()         # the deep cache's blocks and start have no widget to say so
        return changed

    def preview_choice(self) -> tuple[PreviewMode, bool]:
        return PreviewMode(self.preview_mode.currentData()), self.preview_noisy.isChecked()

    def set_busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)

    # -- settings ----------------------------------------------------------------------------

    def save(self, settings: QSettings) -> None:
        save_form(self, settings)

    def restore(self, stored: StoredSettings) -> bool:
        """Put back what `save` stored; False when nothing was stored (a first start)."""
        return restore_form(self, stored)

    # -- size --------------------------------------------------------------------------------

    def _preset_chosen(self, index: int) -> None:
        size = self.size_preset.itemData(index)
        if size is not None:
            width, height = map(int, size.split("x"))
            self.width.setValue(width)
            self.height.setValue(height)

    def _size_edited(self, *_) -> None:
        index = self.size_preset.findData(f"{self.width.value()}x{self.height.value()}")
        self.size_preset.setCurrentIndex(index if index >= 0 else self.size_preset.count() - 1)

    def _snap(self, box: QSpinBox) -> None:
        if box.value() % SIZE_STEP:
            box.setValue(round8(box.value()))
