"""Image files and the settings in them: PNGs written whole and never over another file, and the
A1111 "parameters" text read back from PNG, JPEG and WebP files.

    save_png(image, folder_or_path, infotext) -> Path    the next free name; a temporary file until complete
    read_parameters(path) -> str | None                  the infotext, without decoding a pixel
    remove_stale_temporaries(folder) -> [Path]           what saves cut short by a crash left behind
    save_png_and_mask(image, folder, infotext, mask)     save_png, and the mask beside the image
    save_mask_beside(mask, image_path) -> Path           an inpainting's mask as "00042-mask.png" beside "00042.png"
    mask_beside(image_path) -> Path | None               that mask, if it is there
    is_mask_file(path) -> bool                           a mask beside its image (not a picture of its own)

The text itself (what it says, and how a request is read from it) is core/metadata/infotext.py's.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.errors import LatentDeskError
from core.metadata.png_text import read_text

log = logging.getLogger(__name__)

MAX_PARAMETERS_CHARS = 1 << 20       # Pillow's own limit for one text chunk
MAX_PARAMETERS_BYTES = 4 * MAX_PARAMETERS_CHARS     # as UTF-8 (iTXt), up to 4 bytes a character
MAX_NAME_TRIES = 10_000
TEMPORARY_HEX = 12                   # save_png's temporary files: ".latentdesk-<12 hex digits>.png.tmp"
_TEMPORARY_NAME = re.compile(rf"\.latentdesk-[0-9a-f]{{{TEMPORARY_HEX}}}\.png\.tmp")
STALE_TEMPORARY_S = 120              # a save writes its temporary file for well under a second per image
MASK_SUFFIX = "-mask.png"             # an inpainting's mask, beside its image
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286   # where A1111 puts the infotext in JPEG and WebP files


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


def mask_path_for(image_path: str | Path) -> Path:
    """Where the mask of `image_path` goes: "00042.png" -> "00042-mask.png" (the issue's naming, #24)."""
    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}{MASK_SUFFIX}")


def save_mask_beside(mask: Image.Image, image_path: str | Path) -> Path:
    """Write `mask` (an inpainting's, white = repainted) as a greyscale PNG beside `image_path`, whole or not
    at all: a temporary file first, then one rename. The image's number is its own, so a mask file left by
    an image deleted since belongs to no one and is replaced."""
    target = mask_path_for(image_path)
    tmp = None
    try:
        fd, tmp = _temporary_file(target.parent)
        with os.fdopen(fd, "wb") as f:
            mask.convert("L").save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        return target
    except OSError as e:
        raise LatentDeskError(f"Could not save the mask {target.name} in {target.parent}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def save_png_and_mask(image: Image.Image, folder_or_path: str | Path, infotext: str,
                      mask: Image.Image | None = None) -> Path:
    """save_png, then an inpainting's `mask` beside the image. The image is kept either way: a mask that
    cannot be written is logged, never a reason to lose the picture."""
    path = save_png(image, folder_or_path, infotext)
    if mask is not None:
        try:
            save_mask_beside(mask, path)
        except LatentDeskError:
            log.exception("the mask of %s could not be saved", path.name)
    return path


def mask_beside(image_path: str | Path) -> Path | None:
    """The mask saved with `image_path` (save_mask_beside), or None when there is none."""
    path = mask_path_for(image_path)
    return path if path.is_file() else None


def is_mask_file(path: str | Path) -> bool:
    """A "NAME-mask.png" with its "NAME.png" beside it: a mask, not a picture of its own."""
    path = Path(path)
    if not path.name.lower().endswith(MASK_SUFFIX):
        return False
    return path.with_name(path.name[:-len(MASK_SUFFIX)] + ".png").is_file()


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
    every image of the history on start (core/metadata/png_text.py says what Pillow would cost).
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
