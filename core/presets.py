"""Which settings a model wants: Turbo, Lightning, Hyper-SD and LCM models need few steps, their own
sampler and schedule, and no guidance, and are ruined by a regular model's 25 steps at guidance 7.

    preset_for(path, catalogue)      the preset a model file asks for, and what said so; None when nothing does
    PRESETS[kind]                    the settings of each kind ("turbo", "lightning", "hyper", "lcm")

Signals, strongest first (the user's own choice, kept per model by the window, overrides them all):
1. The catalogue entry the file was downloaded from (its `save_as` name): its settings are the publisher's.
2. The file's metadata: ModelSpec's `modelspec.title` / `usage_hint` / `description` / `architecture`
   (github.com/Stability-AI/ModelSpec README; the spec has no "turbo" key, so the words are looked for)
   and kohya's `ss_output_name` (the name it was trained as).
3. The file's name, split into words the way people write them ("dreamshaperXL_lightningDPMSDE",
   "sdxl_lightning_4step", "Hyper-SDXL-8steps-lora"): most few-step files on Civitai and the Hub say
   so only there. A step count in the name ("4step", "8-steps") is the steps the file was distilled for.

The recipes (resources/catalogue.json for the files it lists; tests/test_few_step_recipes.py shows each
landing where diffusers' pipeline for the family lands): Turbo is Euler a with SGM Uniform (diffusers'
"trailing") spacing and guidance off (Stability's model cards: 1 step, guidance_scale 0.0); Lightning and
Hyper-SD are Euler with SGM Uniform and guidance off (ByteDance's SDXL-Lightning card; Hyper-SD's n-step
LoRAs with trailing DDIM, the same steps for an epsilon model); LCM is the LCM sampler, 4 steps, guidance 1
(diffusers' LCM-LoRA guide: 4-8 steps, guidance 1-2). Guidance 1 is "off" here: one UNet call a step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import LatentDeskError
from core.fetch.catalogue import CatalogueEntry
from core.limits import MAX_CONFIG_BYTES

# The metadata keys read for the words, and how much of each (a description may be pages long).
METADATA_KEYS = ("modelspec.title", "modelspec.usage_hint", "modelspec.architecture", "ss_output_name",
                 "modelspec.description")
METADATA_CHARS = 2_000
MAX_NAMED_STEPS = 16        # "4step": a few-step model's count; a number past this is not one (a version, a seed)


@dataclass(frozen=True)
class Preset:
    kind: str              # "turbo" | "lightning" | "hyper" | "lcm"
    title: str             # for people: "Turbo (1 step)"
    sampler: str
    schedule: str
    steps: int
    guidance: float
    live: bool             # fast enough for Live mode (regenerate while typing) on a CPU
    source: str = ""       # what said so: "the catalogue (sd-turbo)", "file metadata (modelspec.title)", ...


PRESETS = {
    "turbo": Preset("turbo", "Turbo", "Euler a", "SGM Uniform", 1, 1.0, live=True),
    "lightning": Preset("lightning", "Lightning", "Euler", "SGM Uniform", 4, 1.0, live=True),
    "hyper": Preset("hyper", "Hyper-SD", "Euler", "SGM Uniform", 8, 1.0, live=False),
    "lcm": Preset("lcm", "LCM", "LCM", "Automatic", 4, 1.0, live=False),
}
# An LCM-distilled model takes the guidance scale as an input (one call a step whatever it is): diffusers'
# LatentConsistencyModelPipeline defaults to 8.5 and SimianLuo/LCM_Dreamshaper_v7's card uses 8.0.
LCM_EMBEDDED_GUIDANCE = 8.0
# A Lightning or Turbo model made for 1-4 steps is Live-fast; at 8 steps it is a wait on a CPU.
LIVE_MOST_STEPS = 4

_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_STEPS = re.compile(r"(?<![a-z0-9])(\d{1,2})[-_ ]?steps?(?![a-z])", re.IGNORECASE)


def preset_for(path: str | Path, catalogue: Iterable[CatalogueEntry] = ()) -> Preset | None:
    """The preset `path` (a checkpoint or LoRA file, or a diffusers folder) asks for; None for a regular model.

    Never raises for an unreadable file: a model that cannot be read is refused by the loader, with its
    own message; here it just has no preset.
    """
    path = Path(path)
    for entry in catalogue:
        if entry.settings and path.name.lower() == (entry.save_as or Path(entry.file).name).lower():
            return _from_catalogue(entry)      # None for a regular model: the publisher's word is final
    if learnt_guidance(path):
        return replace(PRESETS["lcm"], guidance=LCM_EMBEDDED_GUIDANCE, source="its UNet's guidance embedding")
    metadata = _metadata(path)
    for key in METADATA_KEYS:
        found = kind_named_in(metadata.get(key, "")[:METADATA_CHARS])
        if found:
            return _with_steps(PRESETS[found], metadata.get(key, ""), f"file metadata ({key})")
    found = kind_named_in(path.stem)
    if found:
        return _with_steps(PRESETS[found], path.stem, "the file's name")
    return None


def kind_named_in(text: str) -> str | None:
    """The few-step kind a name or title says, by its words: "turbo", "lightning", "hyper" (only as
    "Hyper-SD…", so "HyperRealism" is not one), "lcm"; None when it says none."""
    words = [w.lower() for w in _WORDS.findall(text)]
    for i, word in enumerate(words):
        if word in ("turbo", "lightning", "lcm"):
            return word
        if word == "hyper" and i + 1 < len(words) and words[i + 1].startswith("sd"):
            return "hyper"
    return None


def named_steps(text: str) -> int | None:
    """The step count a name states ("sdxl_lightning_4step", "Hyper-SD15-8steps"), or None."""
    match = _STEPS.search(text)
    steps = int(match.group(1)) if match else 0
    return steps if 1 <= steps <= MAX_NAMED_STEPS else None


def preset_named(kind: str) -> Preset:
    """The user's choice ("This is a Turbo model") as a preset."""
    if kind not in PRESETS:
        raise LatentDeskError(f"Unknown model type {kind!r}; one of: {', '.join(PRESETS)}")
    return replace(PRESETS[kind], source="you")


def _with_steps(preset: Preset, text: str, source: str) -> Preset:
    steps = named_steps(text) or preset.steps
    return replace(preset, steps=steps, live=preset.live and steps <= LIVE_MOST_STEPS, source=source)


def _from_catalogue(entry: CatalogueEntry) -> Preset | None:
    settings = entry.settings
    kind = kind_named_in(entry.name) or kind_named_in(entry.title)
    if kind is None:
        return None
    steps = int(settings["steps"])
    return Preset(kind, PRESETS[kind].title, settings["sampler"], settings.get("schedule", "Automatic"), steps,
                  float(settings["guidance"]), live=PRESETS[kind].live and steps <= LIVE_MOST_STEPS,
                  source=f"the catalogue ({entry.name})")


def learnt_guidance(path: Path) -> bool:
    """A diffusers folder whose UNet takes a guidance embedding (`time_cond_proj_dim` in unet/config.json)."""
    config = path / "unet" / "config.json"
    if not config.is_file() or config.stat().st_size > MAX_CONFIG_BYTES:
        return False
    from core.loading.untrusted_json import UnreadableJson, loads
    try:
        values = loads(config.read_text(encoding="utf-8"))
    except (UnreadableJson, OSError, UnicodeDecodeError):
        return False
    return isinstance(values, dict) and values.get("time_cond_proj_dim") is not None


def _metadata(path: Path) -> Mapping[str, str]:
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    # Imported here: it needs torch, and the window asks for presets before the engine has loaded.
    from core.loading.safetensors_io import SafetensorsFile
    try:
        return SafetensorsFile(path).metadata
    except (LatentDeskError, OSError):
        return {}
