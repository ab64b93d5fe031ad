"""What the controls panel (app/widgets/controls.py, passed in as `panel`) remembers between starts: its
fields under `form/…` in the settings file.

Every value read back must be one the form can hold; anything else keeps the default (StoredSettings
notes it, so the window opens and says so).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings

from app.jobs import PreviewMode
from app.seeds import FORM_MAX_SEED
from app.settings import StoredSettings, between, one_of
from app.widgets.guidance import HIGH as GUIDANCE_HIGH
from app.widgets.guidance import LOW as GUIDANCE_LOW
from app.widgets.init_image import MIN_STRENGTH
from app.widgets.seed import SEED_TEXT
from core.sampling.sampler_names import SAMPLER_NAMES, SCHEDULE_NAMES


def save_form(panel, settings: QSettings) -> None:
    """Every field of the form, the speed-ups and the LoRAs, under form/… (and their own keys)."""
    r = panel.request()
    for key, value in (("prompt", r.prompt), ("negative", r.negative_prompt), ("guidance", r.guidance),
                       ("steps", r.steps), ("sampler", r.sampler), ("schedule", r.schedule), ("width", r.width),
                       ("height", r.height), ("batch", r.batch), ("strength", r.strength),
                       ("seed", panel.seed.edit.text()), ("seed_random", panel.seed.random.isChecked()),
                       ("preview_mode", panel.preview_mode.currentData()),
                       ("preview_noisy", panel.preview_noisy.isChecked()), ("draft", panel.draft.isChecked()),
                       ("word_maps", panel.word_maps.isChecked())):
        settings.setValue(f"form/{key}", value)
    panel.speedups.save(settings)
    panel.loras.save(settings)


def restore_form(panel, stored: StoredSettings) -> bool:
    """Put back what `save_form` stored; False when nothing was stored (a first start).

    Each value must be one this form can hold: anything else (out of range, NaN, the wrong type)
    keeps the default and is noted in `stored.unusable`, so the window opens and says so.
    """
    if not stored.contains("form/steps"):
        return False
    get = stored.get
    panel.prompt.setPlainText(get("form/prompt", ""))
    panel.negative.setPlainText(get("form/negative", ""))
    panel.guidance.setValue(get("form/guidance", panel.guidance.value(), between(GUIDANCE_LOW, GUIDANCE_HIGH)))
    for key, box in (("steps", panel.steps), ("width", panel.width), ("height", panel.height),
                     ("batch", panel.batch)):
        box.setValue(get(f"form/{key}", box.value(), between(box.minimum(), box.maximum())))
    panel.sampler.setCurrentText(get("form/sampler", panel.sampler.currentText(), one_of(SAMPLER_NAMES)))
    panel.schedule.setCurrentText(get("form/schedule", panel.schedule.currentText(), one_of(SCHEDULE_NAMES)))
    panel.init_well.set_strength(get("form/strength", panel.init_well.strength_value(),
                                    between(MIN_STRENGTH, 1.0)))
    seed = get("form/seed", "", lambda text: text == "" or (SEED_TEXT.fullmatch(text) is not None
                                                           and int(text) <= FORM_MAX_SEED))
    if seed:
        panel.seed.set_seed(int(seed))
    panel.seed.random.setChecked(get("form/seed_random", True))
    mode = get("form/preview_mode", PreviewMode.AUTO.value, one_of([mode.value for mode in PreviewMode]))
    panel.preview_mode.setCurrentIndex(panel.preview_mode.findData(mode))
    panel.preview_noisy.setChecked(get("form/preview_noisy", False))
    panel.draft.setChecked(get("form/draft", False))
    panel.word_maps.setChecked(get("form/word_maps", False))
    get("form/live", False)     # only checked here: the session applies it when a model loads
    panel.speedups.restore(stored)
    panel.loras.restore(stored)
    panel.changed.emit()
    return True
