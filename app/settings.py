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
import os
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

ORGANIZATION = "LatentDesk"
APPLICATION = "Latent Desk"


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
    """The folders for this user, honouring LATENTDESK_DATA_DIR and LATENTDESK_OUTPUT_DIR."""
    settings_file = None
    if os.environ.get("LATENTDESK_DATA_DIR"):
        data = Path(os.environ["LATENTDESK_DATA_DIR"]).expanduser()
        settings_file = data / "settings.ini"
    else:
        location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        data = Path(location) if location else Path.home() / ".latentdesk"
    if os.environ.get("LATENTDESK_OUTPUT_DIR"):
        output = Path(os.environ["LATENTDESK_OUTPUT_DIR"]).expanduser()
    else:
        pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
        output = Path(pictures) / APPLICATION if pictures else data / "outputs"
    return AppPaths(data, output, settings_file)


def open_settings(paths: AppPaths) -> QSettings:
    if paths.settings_file is not None:
        paths.settings_file.parent.mkdir(parents=True, exist_ok=True)
        return QSettings(str(paths.settings_file), QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


def read(settings: QSettings, key: str, default, kind=None):
    """A stored value converted to the type of `default` (ini files give strings back), or `default`."""
    value = settings.value(key)
    if value is None:
        return default
    kind = kind or type(default)
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
        return kind(value)
    except (TypeError, ValueError):
        return default


class HashCache:
    """Model hashes by (path, size, mtime): hashing a 7 GB file takes seconds, so do it once."""

    KEY = "models/hashes"

    def __init__(self, settings: QSettings):
        self.settings = settings

    def _all(self) -> dict:
        try:
            return json.loads(self.settings.value(self.KEY, "{}"))
        except (TypeError, ValueError):
            return {}

    @staticmethod
    def _stamp(path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def get(self, path: Path) -> str | None:
        entry = self._all().get(str(path))
        try:
            return entry["hash"] if entry and entry["stamp"] == self._stamp(path) else None
        except OSError:
            return None

    def put(self, path: Path, digest: str) -> None:
        entries = self._all()
        try:
            entries[str(path)] = {"stamp": self._stamp(path), "hash": digest}
        except OSError:
            return
        self.settings.setValue(self.KEY, json.dumps(dict(list(entries.items())[-50:])))
