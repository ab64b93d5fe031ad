"""Generation settings in image files: A1111's "infotext", the format every SD tool reads.

A PNG written here carries a `parameters` text chunk:

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values containing `,` `:` or a newline are JSON-quoted. `Steps:` starts the last
line because ComfyUI's importer looks for "\\nSteps:". Reading follows A1111's
`parse_generation_parameters` (stable-diffusion-webui `modules/infotext_utils.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.errors import LatentDeskError
from core.png_text import read_text
from core.request import GenerationRequest
from core.sampling.sampler_names import SAMPLER_NAMES

# A1111's pair pattern: "Key: value" or 'Key: "json string"', each ending at a comma or the line end.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RUN = re.compile(r"\s*[\w \-/]*")
_WORD = re.compile(r"\w")
_SIZE = re.compile(r"(\d+)x(\d+)")

MIN_PARAMETER_PAIRS = 3              # A1111: a last line with fewer pairs is still part of the prompt
MAX_PARAMETERS_CHARS = 1 << 20       # Pillow's own limit for one text chunk
MAX_PARAMETERS_BYTES = 4 * MAX_PARAMETERS_CHARS     # as UTF-8 (iTXt), up to 4 bytes a character
HASH_BLOCK = 1 << 20
MAX_NAME_TRIES = 10_000
TEMPORARY_HEX = 12                   # save_png's temporary files: ".latentdesk-<12 hex digits>.png.tmp"
_TEMPORARY_NAME = re.compile(rf"\.latentdesk-[0-9a-f]{{{TEMPORARY_HEX}}}\.png\.tmp")
STALE_TEMPORARY_S = 120              # a save writes its temporary file for well under a second per image
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286   # where A1111 puts the infotext in JPEG and WebP files

# Schedules that A1111 (before 1.9) folded into the sampler name, e.g. "DPM++ 2M Karras";
# GenerationRequest keeps that combined form.
NAMED_SCHEDULES = ("Karras", "Exponential")
# A1111's labels for "whatever the sampler uses by default".
DEFAULT_SCHEDULES = ("", "Automatic", "Uniform")
# Keys this module reads or that describe the file rather than a setting; any other key is reported.
_READ_KEYS = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
              "Clip skip", "Denoising strength", "Model", "Model hash", "Version",
              "Deep cache interval", "Deep cache blocks", "Deep cache start", "Guidance cut-off"}


# -- hashing ----------------------------------------------------------------------------------------

def model_hash(path: str | Path) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's SHA-256.

    For a diffusers folder, which A1111 cannot load, it is the hash of the UNet's
    weights (`unet/diffusion_pytorch_model[.fp16].safetensors`, shards in order),
    the part that tells fine-tunes apart.
    """
    path = Path(path)
    if path.is_dir():
        from core.loading.diffusers_folder import weight_files
        files = weight_files(path / "unet")
    else:
        files = [path]
    digest = hashlib.sha256()
    for file in files:
        try:
            with open(file, "rb") as f:
                while block := f.read(HASH_BLOCK):
                    digest.update(block)
        except OSError as e:
            raise LatentDeskError(f"Cannot read {file} to hash it: {e.strerror or e}") from e
    return digest.hexdigest()[:10]


# -- writing and reading infotext --------------------------------------------------------------------

def to_infotext(request: GenerationRequest, model_name: str | None, model_hash: str | None,
                version: str | None, guidance_used: Sequence[float] = (), *, precision: str | None = None) -> str:
    """The A1111 infotext of `request`; `None` leaves a field out.

    `guidance_used`: the scale each step used. When the slider moved during the run it is
    written as "Guidance schedule: 7 (steps 1-5), 3.5 (steps 6-20)", so the image says how it
    was really made; A1111 and our parser ignore the field, "CFG scale" stays the starting value.
    `precision`: the networks' number format when it was not the exact one (e.g. "bfloat16").
    """
    sampler, schedule = split_sampler(request.sampler)
    params = {
        "Steps": request.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _number(request.guidance),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "Denoising strength": _number(request.strength) if request.is_img2img else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        **speedup_params(request),
        "Precision": precision,
        "Guidance schedule": guidance_schedule(guidance_used),
        "Version": version,
    }
    line = ", ".join(f"{key}: {_quote(str(value))}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def speedup_params(request: GenerationRequest) -> dict[str, object]:
    """The approximate speed-ups (core/sampling/speedups.py), only those switched on: an exact image's text is unchanged."""
    params: dict[str, object] = {}
    if request.deep_cache_interval > 1:
        params["Deep cache interval"] = request.deep_cache_interval
        params["Deep cache blocks"] = request.deep_cache_blocks
        params["Deep cache start"] = _number(request.deep_cache_start)
    if request.guidance_cutoff > 0:
        params["Guidance cut-off"] = _number(request.guidance_cutoff)
    return params


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


def split_sampler(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"), as A1111 1.9+ writes it; other names stay whole."""
    for schedule in NAMED_SCHEDULES:
        if name.endswith(" " + schedule):
            return name.removesuffix(" " + schedule), schedule
    return name, None


def _number(value: float) -> int | float:
    """7.0 -> 7 and 0.75 -> 0.75, as A1111's infotexts show them."""
    return int(value) if float(value).is_integer() else value


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


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
    for an image without one) gives `base` unchanged and a warning.
    A missing "Clip skip" means 1, as in A1111; missing speed-ups (core/sampling/speedups.py) mean off.
    `init_image` and `model` always come from `base`; a different model name is reported.
    """
    info = parse_infotext(text or "")
    if "Steps" not in info:
        return base, ["No generation settings found (no 'Steps: …' line); nothing was read."]
    warnings_: list[str] = []
    changes: dict = {"prompt": info["Prompt"], "negative_prompt": info["Negative prompt"]}
    if "Clip skip" not in info:
        changes["clip_skip"] = 1     # A1111 writes it only when above 1

    def read(key: str, field: str, convert: Callable[[str], object]) -> None:
        if key not in info:
            return
        try:
            changes[field] = convert(info[key])
        except ValueError as e:
            warnings_.append(f"{key}: {info[key]!r} is not usable ({e}); kept {getattr(base, field)!r}.")

    read("Steps", "steps", lambda v: _whole(v, 1))
    read("CFG scale", "guidance", _finite)
    read("Seed", "seed", lambda v: _whole(v, 0))
    read("Clip skip", "clip_skip", lambda v: _whole(v, 1))
    # Written only when switched on: a text without them was made exactly.
    if "Deep cache interval" not in info:
        changes["deep_cache_interval"] = 1
    if "Guidance cut-off" not in info:
        changes["guidance_cutoff"] = 0.0
    read("Deep cache interval", "deep_cache_interval", lambda v: _whole(v, 1))
    read("Deep cache blocks", "deep_cache_blocks", lambda v: _whole(v, 1))
    read("Deep cache start", "deep_cache_start", lambda v: _fraction(_finite(v)))
    read("Guidance cut-off", "guidance_cutoff", lambda v: _fraction(_finite(v)))
    if "Size" in info:
        if size := _SIZE.fullmatch(info["Size"].strip()):
            width, height = int(size.group(1)), int(size.group(2))
            if width > 0 and height > 0:
                changes["width"], changes["height"] = width, height
        if "width" not in changes:
            warnings_.append(f"Size: {info['Size']!r} is not a size like 512x768; kept {base.width}x{base.height}.")

    hires = sorted(k for k in info if k.startswith("Hires"))
    if hires:
        warnings_.append("Hires fix is not available; its settings were ignored: " + ", ".join(hires) + ".")
    else:   # with hires fix, "Denoising strength" is the upscale pass's, not img2img's
        read("Denoising strength", "strength", lambda v: _between(_finite(v), 0.0, 1.0))
        if "strength" in changes and not base.is_img2img:
            warnings_.append(f"The image was made from a starting image (Denoising strength {changes['strength']}); "
                             "add one to make it again.")

    if info.get("Sampler", "").strip():
        sampler, note = join_sampler(info["Sampler"], info.get("Schedule type", ""), known_samplers)
        changes["sampler"] = sampler
        warnings_ += [note] if note else []

    recorded = info.get("Model")
    current = Path(base.model)
    if recorded and recorded not in (current.stem, current.name):
        made_with = f"'{recorded}'" + (f" (hash {info['Model hash']})" if info.get("Model hash") else "")
        warnings_.append(f"The image was made with model {made_with}; the current model '{current.stem}' is kept.")

    ignored = [k for k in info if k not in _READ_KEYS and k not in hires]
    if ignored:
        warnings_.append("Settings Latent Desk does not have were ignored: " + ", ".join(ignored) + ".")
    return replace(base, **changes), warnings_


def join_sampler(sampler: str, schedule: str, known: Collection[str] = SAMPLER_NAMES) -> tuple[str, str | None]:
    """A1111's "Sampler" (+ "Schedule type") -> a GenerationRequest sampler name and a warning or None.

    Reads both the old combined form ("DPM++ 2M Karras") and the 1.9+ pair
    ("DPM++ 2M" + "Karras"); names match `known` ignoring case; unknown ones are kept.
    """
    sampler, schedule = sampler.strip(), schedule.strip()
    note = None
    if schedule in NAMED_SCHEDULES and not sampler.endswith(" " + schedule):
        sampler = f"{sampler} {schedule}"
    elif schedule not in NAMED_SCHEDULES and schedule not in DEFAULT_SCHEDULES:
        note = f"Schedule type '{schedule}' is not available; the sampler's own schedule is used."
    by_lower = {name.lower(): name for name in known}
    if sampler.lower() in by_lower:
        return by_lower[sampler.lower()], note
    unknown = f"Sampler '{sampler}' is not one Latent Desk has; choose another before generating."
    return sampler, f"{note} {unknown}" if note else unknown


def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("not a whole number") from None
    if value < low:
        raise ValueError(f"below {low}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _fraction(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError("not from 0 to below 1")
    return value


def _between(value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ValueError(f"outside {low}–{high}")
    return value


# -- image files ------------------------------------------------------------------------------------

def save_png(image: Image.Image, folder_or_path: str | Path, infotext: str) -> Path:
    """Write `image` as a PNG with `infotext` in its `parameters` chunk; returns the path written.

    Never overwrites: a folder gets the next "00042.png" (one more than the highest
    number there, from 00000, as A1111 counts), a taken file name gets "-1", "-2", …
    appended; a path not ending in ".png" is a folder.
    The PNG is written to a hidden temporary file first and then hard-linked to the
    free name, so the name appears only complete, and a name taken meanwhile by
    another writer is skipped, not replaced.
    """
    target = Path(folder_or_path)
    if target.is_dir() or target.suffix.lower() != ".png":
        folder, names = target, _numbered_names(target)
    else:
        folder, names = target.parent, _variant_names(target)
    info = PngInfo()
    if _is_latin1(infotext):
        info.add_text("parameters", infotext)          # tEXt, what A1111 writes
    else:
        info.add_itxt("parameters", infotext)          # iTXt (UTF-8): tEXt is latin-1 only
    tmp = None
    if folder.exists() and not folder.is_dir():      # mkdir would only say "File exists"
        raise LatentDeskError(f"Could not save the image: {folder} is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_file(folder)
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        for _, name in zip(range(MAX_NAME_TRIES), names, strict=False):
            try:
                _publish(tmp, name)
                return name
            except FileExistsError:
                continue
        raise LatentDeskError(f"Could not find a free file name in {folder}.")
    except OSError as e:
        raise LatentDeskError(f"Could not save the image in {folder}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _temporary_file(folder: Path) -> tuple[int, Path]:
    """A new hidden file in `folder`, created with the user's umask (mkstemp's would be private, 0600)."""
    while True:
        path = folder / f".latentdesk-{secrets.token_hex(TEMPORARY_HEX // 2)}.png.tmp"
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue


def remove_stale_temporaries(folder: str | Path, older_than: float = STALE_TEMPORARY_S) -> list[Path]:
    """Delete the temporary files of saves that a crash cut short, in `folder`; the paths removed.

    Only save_png's own names (".latentdesk-<12 hex digits>.png.tmp"), only plain files, only those
    untouched for `older_than` seconds: a save still being written (here, or by another Latent Desk
    saving into the same folder) keeps changing its file. Never raises: a folder that cannot be read
    is left as it is.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not _TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _publish(tmp: Path, name: Path) -> None:
    """Give the finished temporary file the name `name`; FileExistsError if the name is taken."""
    try:
        os.link(tmp, name)
        return
    except FileExistsError:
        raise
    except OSError:
        pass      # no hard links here (FAT, some network drives): claim the name, then move onto it
    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        os.replace(tmp, name)
    except OSError:
        name.unlink(missing_ok=True)      # our own empty placeholder
        raise


def _numbered_names(folder: Path) -> Iterator[Path]:
    numbers = [int(m.group()) for p in (folder.iterdir() if folder.is_dir() else ())
               if (m := re.match(r"\d+", p.name))]
    n = max(numbers, default=-1) + 1      # A1111's first image is 00000
    while True:
        yield folder / f"{n:05d}.png"
        n += 1


def _variant_names(path: Path) -> Iterator[Path]:
    yield path
    n = 1
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def read_parameters(path: str | Path) -> str | None:
    """The infotext of an image: PNG `parameters` (tEXt, zTXt or iTXt), else A1111's EXIF UserComment
    (a PNG's eXIf chunk, JPEG, WebP).

    None when there is none, it is malformed or over 1 MiB, or the file is not an image; a
    LatentDeskError only when the file itself cannot be read. No pixel is decoded: this runs for
    every image of the history on start (core/png_text.py says what Pillow would cost).
    """
    path = Path(path)
    try:
        file = open(path, "rb")
    except OSError as e:
        raise LatentDeskError(f"Cannot read {path}: {e.strerror or e}") from e
    with file:
        try:
            text = _png_parameters(file)
            if text is _NOT_PNG:
                text = _exif_parameters(file)
        except Exception:    # a broken file is an image without parameters, never a crash
            return None
    if not isinstance(text, str) or not text or len(text) > MAX_PARAMETERS_CHARS:
        return None
    return text


_NOT_PNG = object()


def _png_parameters(file) -> str | None | object:
    found = read_text(file, "parameters", MAX_PARAMETERS_BYTES)
    if found is None:
        return _NOT_PNG
    if found.text is not None or found.too_long or found.exif is None:
        return found.text
    exif = Image.Exif()
    exif.load(found.exif)
    return _user_comment(exif.get_ifd(EXIF_IFD).get(USER_COMMENT))


def _exif_parameters(file) -> str | None:
    """A1111's EXIF UserComment in a JPEG or WebP; Pillow reads the EXIF without decoding pixels."""
    file.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)     # only its header is read
        with Image.open(file, formats=("JPEG", "WEBP")) as image:
            return _user_comment(image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT))


def _user_comment(raw: object) -> str | None:
    """EXIF UserComment: an 8-byte charset tag, then the text (A1111 writes "UNICODE", UTF-16 big-endian)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    tag, body = raw[:8], raw[8:]
    if tag == b"UNICODE\0":
        # Zero high bytes show the byte order; some writers use little-endian despite the standard.
        encoding = "utf-16-be" if body[0::2].count(0) >= body[1::2].count(0) else "utf-16-le"
    elif tag == b"ASCII\0\0\0":
        encoding = "ascii"
    elif tag == b"\0" * 8:
        encoding = "utf-8"
    else:
        return None
    try:
        return body.decode(encoding).rstrip("\0") or None
    except UnicodeDecodeError:
        return None
