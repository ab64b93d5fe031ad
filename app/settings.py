"""Where the app keeps things, and its settings.

    data folder     LATENTDESK_DATA_DIR, else the platform's app data folder
                    (Linux ~/.local/share/LatentDesk/Latent Desk, Windows %APPDATA%, macOS
                    ~/Library/Application Support); holds models/ (scanned on start) and pasted/
    output folder   LATENTDESK_OUTPUT_DIR, else Pictures/Latent Desk, else <data folder>/outputs
    settings        QSettings("LatentDesk", "Latent Desk") — the registry, a plist or an ini
                    file as the platform does it; with LATENTDESK_DATA_DIR set, the ini file
                    <data folder>/settings.ini instead, so tests and portable installs never
                    touch the user's real settings.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

from app.paths import APPLICATION, DATA_DIR_VAR, ORGANIZATION, default_data_dir

_HASH = re.compile(r"[0-9a-f]{10}")       # core.metadata.model_hash: A1111's 10 hex digits


@dataclass(frozen=True)
class AppPaths:
    data_dir: Path
    output_dir: Path
    settings_file: Path | None = None     # None: the platform's own settings store

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def pasted_dir(self) -> Path:
        return self.data_dir / "pasted"


def default_paths() -> AppPaths:
    """The folders for this user, honouring LATENTDESK_DATA_DIR and LATENTDESK_OUTPUT_DIR.

    The data folder comes from app.paths, which works out Qt's AppDataLocation without Qt, so the
    command line (no Qt) uses the same models folder as the window."""
    data = default_data_dir()
    settings_file = data / "settings.ini" if os.environ.get(DATA_DIR_VAR) else None
    if os.environ.get("LATENTDESK_OUTPUT_DIR"):
        output = Path(os.environ["LATENTDESK_OUTPUT_DIR"]).expanduser()
    else:
        pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
        output = Path(pictures) / APPLICATION if pictures else data / "outputs"
    return AppPaths(data, output, settings_file)


def open_settings(paths: AppPaths) -> QSettings:
    if paths.settings_file is not None:
        try:
            paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass    # a read-only data folder: the settings still read, only saving them fails (QSettings says so)
        return QSettings(str(paths.settings_file), QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


_UNUSABLE = object()
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(value, kind):
    """`value` as `kind`, or _UNUSABLE. Ini files give text back, the registry and plists typed values;
    a damaged or hand-edited file gives anything: a list ("a, b"), bytes, "nan", 5,000 digits."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str | int) else ""
        return True if text in _TRUE else False if text in _FALSE else _UNUSABLE
    if kind is str:
        return value if isinstance(value, str) else _UNUSABLE
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return _UNUSABLE
    if kind is int and isinstance(value, float) and not value.is_integer():
        return _UNUSABLE    # int() would cut 7.5 steps to 7 without a word
    try:
        converted = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):     # ValueError also for ints past Python's 4,300 digits
        return _UNUSABLE
    if isinstance(converted, float) and not math.isfinite(converted):
        return _UNUSABLE    # no setting is NaN or infinite; widgets fail on them
    return converted


def read(settings: QSettings, key: str, default, kind=None):
    """A stored value converted to the type of `default`, or `default` when it is missing or unusable."""
    value = _stored(settings, key)
    if value is None:
        return default
    converted = _convert(value, kind or type(default))
    return default if converted is _UNUSABLE else converted


def _stored(settings: QSettings, key: str):
    try:
        return settings.value(key)
    except Exception:      # noqa: BLE001 - a value PySide cannot convert (an odd @Variant) is no value
        return _UNUSABLE


class StoredSettings:
    """The saved settings as the window reads them on start: each value checked, none trusted.

    `get` gives the default for a missing value quietly; for an unusable one (the wrong type, out of
    range, NaN: a damaged or hand-edited file) it gives the default too, notes the key, so the window
    opens anyway and can say which settings it reset, and removes the value: not every key is written
    back on closing (form/live is only when the user clicks it), and the reset is said once.
    """

    def __init__(self, settings: QSettings):
        self.settings = settings
        self.unusable: list[str] = []

    def contains(self, key: str) -> bool:
        return _stored(self.settings, key) is not None

    def get(self, key: str, default, valid: Callable[[object], bool] = lambda value: True):
        value = _stored(self.settings, key)
        if value is None:
            return default
        converted = _convert(value, type(default))
        if converted is _UNUSABLE or not valid(converted):
            if key not in self.unusable:
                self.unusable.append(key)
                self.settings.remove(key)
            return default
        return converted

    def message(self) -> str:
        names = ", ".join(key.removeprefix("form/") for key in self.unusable)
        return f"Some saved settings could not be used and are back to their defaults: {names}."


def between(low: float, high: float) -> Callable[[float], bool]:
    return lambda value: low <= value <= high


def one_of(choices: Collection) -> Callable[[object], bool]:
    return lambda value: value in choices


def absolute_path_or_empty(value: str) -> bool:
    """A folder the user chose (always absolute, from a dialog); a relative one would land wherever
    the app happened to start."""
    return value == "" or ("\0" not in value and Path(value).is_absolute())


class HashCache:
    """Model hashes by (path, size, mtime): hashing a 7 GB file takes seconds, so do it once.

    The cache is a convenience: anything odd in it (not JSON, nested past the parser's depth, entries
    of the wrong shape, a hash that is not 10 hex digits) counts as "not cached", never as an error,
    so it cannot stop a model from loading."""

    KEY = "models/hashes"

    def __init__(self, settings: QSettings):
        self.settings = settings

    def _all(self) -> dict:
        text = _stored(self.settings, self.KEY)
        try:
            entries = json.loads(text) if isinstance(text, str) else {}
        except (ValueError, RecursionError):
            return {}
        return entries if isinstance(entries, dict) else {}

    @staticmethod
    def _stamp(path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def get(self, path: Path) -> str | None:
        entry = self._all().get(str(path))
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str) or not _HASH.fullmatch(entry["hash"]):
            return None     # hand-edited or damaged: hashed again, then put back right
        try:
            return entry["hash"] if entry.get("stamp") == self._stamp(path) else None
        except OSError:
            return None

    def put(self, path: Path, digest: str) -> None:
        entries = self._all()
        try:
            entries[str(path)] = {"stamp": self._stamp(path), "hash": digest}
        except OSError:
            return
        self.settings.setValue(self.KEY, json.dumps(dict(list(entries.items())[-50:])))
