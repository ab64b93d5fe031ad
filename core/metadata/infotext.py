"""Generation settings as A1111's "infotext", the text every SD tool reads from an image.

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values containing `,` `:` or a newline are JSON-quoted. `Steps:` starts the last
line because ComfyUI's importer looks for "\\nSteps:". Reading follows A1111's
`parse_generation_parameters` (stable-diffusion-webui `modules/infotext_utils.py`).

SETTINGS, one row per key, is the one map between A1111's keys and GenerationRequest's fields: writing
(to_infotext, speedup_params) and reading (request_from_infotext) both follow it. A value read must keep
the rule generate() applies to its field (core/request.py), so what an image restores is usable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from core.errors import LatentDeskError
from core.fetch.addons import addon_name
from core.limits import NOT_WHOLE, BrokenRule, check_size
from core.request import SPEEDUP_FIELDS, GenerationRequest, check_field, check_loras, check_outpaint
from core.sampling.sampler_names import (
    AUTOMATIC,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    resolve_schedule,
    split_sampler,
)

# A1111's pair pattern: "Key: value" or 'Key: "json string"', each ending at a comma or the line end.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RUN = re.compile(r"\s*[\w \-/]*")
_WORD = re.compile(r"\w")
_SIZE = re.compile(r"(\d+)x(\d+)")

MIN_PARAMETER_PAIRS = 3              # A1111: a last line with fewer pairs is still part of the prompt
# A1111's labels for "whatever the sampler uses by default" (A1111 1.9+ writes no "Schedule type" for it).
DEFAULT_SCHEDULES = ("", AUTOMATIC)
NOTHING_READ = "No generation settings found (no 'Steps: …' line); nothing was read."
KEEP = object()       # Setting.missing: a key that is absent leaves the field as the base request has it


class Setting(NamedTuple):
    """One A1111 key: which request fields it holds, how it is written, how it is read."""

    key: str
    fields: tuple[str, ...]        # the GenerationRequest fields it holds; () when it describes the file instead
    # request -> the value written, None leaving the key out; None here: the value is an argument of to_infotext.
    write: Callable[[GenerationRequest], object] | None
    # text -> the value, which then must keep its field's rule; None: read by hand in request_from_infotext.
    read: Callable[[str], object] | None = None
    missing: object = KEEP         # the field's value when the key is absent


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(NOT_WHOLE) from None


def _real_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def _number(value: float) -> int | float:
    """7.0 -> 7 and 0.75 -> 0.75, as A1111's infotexts show them."""
    return int(value) if float(value).is_integer() else value


def _sampler_and_schedule(request: GenerationRequest) -> tuple[str, str | None]:
    """A1111 1.9+'s "Sampler" and "Schedule type": ("DPM++ 2M", "Karras") for "DPM++ 2M Karras" (as always), and
    ("Euler a", "SGM Uniform") for Euler a with the schedule type SGM Uniform; None for the sampler's own."""
    sampler, schedule = resolve_schedule(request.sampler, request.schedule)
    base, named = split_sampler(sampler)
    return base, named if schedule == AUTOMATIC else schedule


def _while_deep_cache(value: Callable[[GenerationRequest], object]) -> Callable[[GenerationRequest], object]:
    """Its settings are written only while DeepCache is on: an exact image's text stays as it always was."""
    return lambda r: value(r) if r.deep_cache_interval > 1 else None


AREA_NAMES = {"whole": "Whole picture", "masked": "Only masked"}     # A1111's labels for inpaint_full_res
AREAS_NAMED = {label: area for area, label in AREA_NAMES.items()}


def _while_inpainting(value: Callable[[GenerationRequest], object]) -> Callable[[GenerationRequest], object]:
    """Inpainting's settings are written only for an inpainting (a mask or outpainting)."""
    return lambda r: value(r) if r.mask is not None or r.outpaint is not None else None


def _four_sides(text: str) -> tuple[int, ...]:
    try:
        return check_outpaint(tuple(int(side) for side in text.split(",")))
    except LatentDeskError as e:
        raise ValueError(str(e)) from None


# In the order A1111 writes them (the written text must stay byte for byte what it has been).
SETTINGS = (
    Setting("Steps", ("steps",), lambda r: r.steps, _whole_number),
    Setting("Sampler", ("sampler",), lambda r: _sampler_and_schedule(r)[0]),
    Setting("Schedule type", ("sampler", "schedule"), lambda r: _sampler_and_schedule(r)[1]),
    Setting("CFG scale", ("guidance",), lambda r: _number(r.guidance), _real_number),
    Setting("Seed", ("seed",), lambda r: r.seed, _whole_number),
    Setting("Size", ("width", "height"), lambda r: f"{r.width}x{r.height}"),
    Setting("Model hash", (), None),
    Setting("Model", (), None),
    Setting("Denoising strength", ("strength",), lambda r: _number(r.strength) if r.is_img2img else None),
    # Inpainting, as A1111's img2img writes it (modules/processing.py: "Mask blur" when above 0, "Inpaint area"
    # and "Masked area padding" for "Only masked"; its paste fields read "Masked content" by the choice's name).
    Setting("Mask blur", ("mask_blur",), _while_inpainting(lambda r: r.mask_blur or None), _whole_number),
    Setting("Masked content", ("masked_content",), _while_inpainting(lambda r: r.masked_content), str),
    Setting("Inpaint area", ("inpaint_area",), _while_inpainting(lambda r: AREA_NAMES[r.inpaint_area]),
            lambda text: AREAS_NAMED.get(text, text)),
    Setting("Masked area padding", ("inpaint_padding",),
            _while_inpainting(lambda r: r.inpaint_padding if r.inpaint_area == "masked" else None), _whole_number),
    # Our own keys: outpainting's growth, and a draft's tiny decoder (missing: the VAE, as every image before).
    Setting("Outpaint", ("outpaint",), lambda r: ",".join(map(str, r.outpaint)) if r.outpaint else None,
            _four_sides),
    Setting("Decoder", ("decoder",), lambda r: "TAESD" if r.decoder == "taesd" else None,
            lambda text: text.strip().lower(), missing="vae"),
    # A1111 writes "Clip skip" only above 1.
    Setting("Clip skip", ("clip_skip",), lambda r: r.clip_skip if r.clip_skip > 1 else None, _whole_number,
            missing=1),
    # The approximate speed-ups (core/sampling/speedups.py): written only when on, so missing means off.
    Setting("Deep cache interval", ("deep_cache_interval",), _while_deep_cache(lambda r: r.deep_cache_interval),
            _whole_number, missing=1),
    Setting("Deep cache blocks", ("deep_cache_blocks",), _while_deep_cache(lambda r: r.deep_cache_blocks),
            _whole_number),
    Setting("Deep cache start", ("deep_cache_start",), _while_deep_cache(lambda r: _number(r.deep_cache_start)),
            _real_number),
    Setting("Guidance cut-off", ("guidance_cutoff",),
            lambda r: _number(r.guidance_cutoff) if r.guidance_cutoff > 0 else None, _real_number, missing=0.0),
    # The LoRAs chosen beside the prompt (the panel, --lora): our own key, as the prompt's tags are A1111's.
    # Read by hand (request_from_infotext); missing means none.
    Setting("LoRAs", ("loras",), lambda r: lora_list(r.loras) or None),
    Setting("Precision", (), None),
    Setting("Guidance schedule", (), None),
    # A1111 writes these two from its extra_generation_params, LoRAs' first (extra_networks_lora.py, then
    # sd_hijack_clip.py's "TI hashes"), just before "Version".
    Setting("Lora hashes", (), None),
    Setting("TI hashes", (), None),
    Setting("Version", (), None),
)
# Keys a reader knows, so never lists as ignored: the settings, and what names the file's model and maker.
# Precision and Guidance schedule are listed: they are not restored, and the image may come out different.
_KNOWN_KEYS = {"Prompt", "Negative prompt", "Model", "Model hash", "Version", "Lora hashes", "TI hashes",
               *(s.key for s in SETTINGS if s.fields)}


# -- writing -----------------------------------------------------------------------------------------

def to_infotext(request: GenerationRequest, model_name: str | None, model_hash: str | None,
                version: str | None, guidance_used: Sequence[float] = (), *, precision: str | None = None,
                lora_hashes: Sequence[tuple[str, str]] = (), ti_hashes: Sequence[tuple[str, str]] = ()) -> str:
    """The A1111 infotext of `request`; `None` leaves a field out.

    `guidance_used`: the scale each step used. When the slider moved during the run it is
    written as "Guidance schedule: 7 (steps 1-5), 3.5 (steps 6-20)", so the image says how it
    was really made; A1111 and our parser ignore the field, "CFG scale" stays the starting value.
    `precision`: the networks' number format when it was not the exact one (e.g. "bfloat16").
    `lora_hashes` / `ti_hashes`: (name, hash) of each LoRA / embedding used (GenerationResult.loras, .embeddings).
    """
    about_the_file = {"Model hash": model_hash, "Model": model_name, "Precision": precision,
                      "Guidance schedule": guidance_schedule(guidance_used), "Version": version,
                      "Lora hashes": hash_list(lora_hashes), "TI hashes": hash_list(ti_hashes)}
    values = {s.key: s.write(request) if s.write else about_the_file[s.key] for s in SETTINGS}
    line = ", ".join(f"{key}: {_quote(str(value))}" for key, value in values.items() if value is not None)
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def speedup_params(request: GenerationRequest) -> dict[str, object]:
    """The approximate speed-ups (core/sampling/speedups.py), only those switched on: an exact image's text is unchanged."""
    return {s.key: value for s in SETTINGS
            if set(s.fields) & set(SPEEDUP_FIELDS) and (value := s.write(request)) is not None}


def guidance_schedule(per_step: Sequence[float]) -> str | None:
    """"7 (steps 1-5), 3.5 (steps 6-20)" for scales that changed during a run; None if they never did."""
    runs: list[list] = []   # [scale, first step, last step], steps counted from 1
    for step, scale in enumerate(per_step, start=1):
        if runs and runs[-1][0] == scale:
            runs[-1][2] = step
        else:
            runs.append([scale, step, step])
    if len(runs) < 2:
        return None
    return ", ".join(f"{_number(scale)} (step {a})" if a == b else f"{_number(scale)} (steps {a}-{b})"
                     for scale, a, b in runs)


def hash_list(hashes: Sequence[tuple[str, str]]) -> str | None:
    """A1111's "name: hash, name2: hash2", each name without ':' and ',' as A1111 strips them (extensions-builtin/
    Lora/extra_networks_lora.py, modules/sd_hijack_clip.py); None when there is none."""
    entries = [f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in hashes if digest]
    return ", ".join(entries) or None


def lora_list(loras: Sequence[tuple[str, float]]) -> str:
    """The "LoRAs" value: "name:0.8, other:-0.5", names not paths (core.fetch.addons.addon_name)."""
    return ", ".join(f"{addon_name(spec)}:{_number(weight)}" for spec, weight in loras)


def read_lora_list(text: str, notes: list[str]) -> tuple[tuple[str, float], ...]:
    """lora_list's text read back; an entry that is not "name:weight" is left out with a note."""
    loras = []
    for entry in (e.strip() for e in text.split(",")):
        name, _, weight = entry.rpartition(":")
        try:
            loras.append(check_loras(((name.strip(), _real_number(weight)),))[0])
        except (ValueError, BrokenRule) as e:
            reason = e.reason if isinstance(e, BrokenRule) else str(e)
            notes.append(f"LoRAs: {entry!r} is not usable ({reason}); left out.")
    try:
        return check_loras(tuple(loras))
    except BrokenRule as e:
        notes.append(f"LoRAs: {e.reason}; none were restored.")
        return ()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


# -- reading -----------------------------------------------------------------------------------------

def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """`re.findall` of A1111's pair pattern, without its quadratic time on long lines.

    Where a match fails, every start up to the end of the key-like run there fails
    too, unless the run ends in ':'; then the first word character inside it is the
    next start that can match. The starts in between are skipped, not tried.
    """
    pairs, pos = [], 0
    while pos < len(line):
        if match := _PAIR.match(line, pos):
            pairs.append((match.group(1), match.group(2)))
            pos = match.end()
            continue
        end = _KEY_RUN.match(line, pos).end()
        word = _WORD.search(line, pos + 1, end - 1) if line[end:end + 1] == ":" else None
        pos = word.start() if word else max(pos + 1, end)
    return pairs


def parse_infotext(text: str) -> dict[str, str]:
    """Infotext -> {"Prompt": …, "Negative prompt": …, "Steps": "20", "Size": "512x512", …}.

    As A1111 does it: the last line holds the parameters only if it has at least three
    "Key: value" pairs; lines before "Negative prompt:" are the prompt, the rest the
    negative; each line is stripped; quoted values are unquoted. Never raises.
    """
    *lines, last = text.strip().split("\n")
    pairs = parameter_pairs(last)
    if len(pairs) < MIN_PARAMETER_PAIRS:
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:").strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        result[key] = _unquote(value)
    return result


def request_from_infotext(text: str | None, base: GenerationRequest, *,
                          known_samplers: Collection[str] = SAMPLER_NAMES) -> tuple[GenerationRequest, list[str]]:
    """The settings an infotext records, on top of `base`, and what could not be used.

    Never raises: text without a parameter line (or None, what `read_parameters` gives
    for an image without one) gives `base` unchanged and a warning. A value its field's rule
    refuses (core/request.py) is reported and the base's kept. A missing "Clip skip" means 1,
    as in A1111; missing speed-ups mean off. `init_image` and `model` always come from `base`;
    a different model name is reported.
    """
    info = parse_infotext(text or "")
    if "Steps" not in info:
        return base, [NOTHING_READ]
    notes: list[str] = []
    changes: dict = {"prompt": info["Prompt"], "negative_prompt": info["Negative prompt"]}

    def read(key: str, field: str, convert: Callable[[str], object]) -> None:
        try:
            changes[field] = check_field(field, convert(info[key]), base)
        except (ValueError, BrokenRule) as e:
            reason = e.reason if isinstance(e, BrokenRule) else str(e)
            notes.append(f"{key}: {info[key]!r} is not usable ({reason}); kept {getattr(base, field)!r}.")

    for setting in SETTINGS:
        if setting.read is None:
            continue
        (field,) = setting.fields
        if setting.key in info:
            read(setting.key, field, setting.read)
        elif setting.missing is not KEEP:
            changes[field] = setting.missing
    if "Size" in info:
        changes |= _size(info["Size"], base, notes)
    changes["loras"] = read_lora_list(info["LoRAs"], notes) if info.get("LoRAs", "").strip() else ()

    hires = sorted(k for k in info if k.startswith("Hires"))
    if hires:
        notes.append("Hires fix is not available; its settings were ignored: " + ", ".join(hires) + ".")
    elif "Denoising strength" in info:      # with hires fix it is the upscale pass's, not img2img's
        read("Denoising strength", "strength", _real_number)
        if "strength" in changes and not base.is_img2img:
            notes.append(f"The image was made from a starting image (Denoising strength {changes['strength']}); "
                         "add one to make it again.")

    if info.get("Sampler", "").strip():
        changes["sampler"], changes["schedule"], note = join_sampler(info["Sampler"], info.get("Schedule type", ""),
                                                                     known_samplers)
        notes += [note] if note else []

    recorded = info.get("Model")
    current = Path(base.model)
    if recorded and recorded not in (current.stem, current.name):
        made_with = f"'{recorded}'" + (f" (hash {info['Model hash']})" if info.get("Model hash") else "")
        notes.append(f"The image was made with model {made_with}; the current model '{current.stem}' is kept.")

    ignored = [k for k in info if k not in _KNOWN_KEYS and k not in hires]
    if ignored:
        notes.append("Settings Latent Desk does not have were ignored: " + ", ".join(ignored) + ".")
    return replace(base, **changes), notes


def _size(text: str, base: GenerationRequest, notes: list[str]) -> dict[str, int]:
    """{"width": …, "height": …} from "512x768" if check_size takes it; else {} and a note."""
    kept = f"kept {base.width}x{base.height}."
    size = _SIZE.fullmatch(text.strip())
    try:
        width, height = (int(size.group(1)), int(size.group(2))) if size else (0, 0)
    except ValueError:      # more digits than int() converts
        width = height = 0
    if width <= 0 or height <= 0:
        notes.append(f"Size: {text!r} is not a size like 512x768; {kept}")
        return {}
    try:
        check_size(width, height)
    except LatentDeskError as e:
        notes.append(f"Size: {text!r} is not usable ({e}); {kept}")
        return {}
    return {"width": width, "height": height}


def join_sampler(sampler: str, schedule: str,
                 known: Collection[str] = SAMPLER_NAMES) -> tuple[str, str, str | None]:
    """A1111's "Sampler" (+ "Schedule type") -> GenerationRequest's sampler and schedule, and a warning or None.

    Reads both the old combined form ("DPM++ 2M Karras") and the 1.9+ pair ("DPM++ 2M" + "Karras"), both as
    ("DPM++ 2M Karras", "Automatic"); a sampler Latent Desk has only with a schedule in its name takes any
    other schedule type ("DPM++ 2M SDE" + "Beta" -> ("DPM++ 2M SDE Karras", "Beta")). Names match `known`
    and SCHEDULE_NAMES ignoring case; unknown samplers are kept, unknown schedule types read as "Automatic".
    """
    sampler, schedule = sampler.strip(), schedule.strip()
    note = None
    types = {name.lower(): name for name in SCHEDULE_NAMES}
    if schedule in DEFAULT_SCHEDULES or schedule.lower() not in types:
        if schedule not in DEFAULT_SCHEDULES:
            note = f"Schedule type '{schedule}' is not available; the sampler's own schedule is used."
        schedule = AUTOMATIC
    schedule = types[schedule.lower()]
    by_lower = {name.lower(): name for name in known}
    # the sampler's own spelling; else the one sampler that has it only with a schedule in its name
    by_base = {split_sampler(name)[0].lower(): name for name in known if split_sampler(name)[1]}
    if sampler.lower() in by_lower:
        sampler = by_lower[sampler.lower()]
    elif f"{split_sampler(sampler)[0]} {schedule}".lower() in by_lower:
        sampler, schedule = by_lower[f"{split_sampler(sampler)[0]} {schedule}".lower()], AUTOMATIC
    elif sampler.lower() in by_base and schedule != AUTOMATIC:
        sampler = by_base[sampler.lower()]
    else:
        unknown = f"Sampler '{sampler}' is not one Latent Desk has; choose another before generating."
        return sampler, schedule, f"{note} {unknown}" if note else unknown
    return (*resolve_schedule(sampler, schedule, known), note)
