"""Where Latent Desk keeps its files, without Qt (the command line must run without it).

    default_data_dir()     LATENTDESK_DATA_DIR, else the folder Qt's QStandardPaths gives the window
                           for AppDataLocation; its models/ is the models folder of both

The window and the command line must agree on the data folder, or a model downloaded with
`latentdesk models get` would not be in the window's list. The window asks QStandardPaths; this module
works out the same answer by Qt's own rules, so the command line needs no Qt. Qt's rules, from its
qstandardpaths_unix.cpp and the QStandardPaths documentation's table for AppDataLocation, with
<org>/<app> appended as appendOrganizationAndApp does (tests/test_paths.py compares the two here):

    Linux and other Unix   $XDG_DATA_HOME (when absolute; Qt 6 ignores a relative one) or ~/.local/share
    macOS                  ~/Library/Application Support
    Windows                %APPDATA% (the roaming AppData folder)

This is the lowest layer of the app and imports nothing from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ORGANIZATION = "LatentDesk"      # QCoreApplication's organizationName, as app/main.py sets it
APPLICATION = "Latent Desk"      # ... and its applicationName
DATA_DIR_VAR = "LATENTDESK_DATA_DIR"
FALLBACK_DIR_NAME = ".latentdesk"   # in the home folder, when the platform's folder cannot be worked out


def default_data_dir() -> Path:
    """The data folder: LATENTDESK_DATA_DIR if set, else the platform's app data folder for Latent Desk."""
    if os.environ.get(DATA_DIR_VAR):
        return Path(os.environ[DATA_DIR_VAR]).expanduser()
    base = _platform_data_home()
    if base is None:
        return Path.home() / FALLBACK_DIR_NAME
    return base / ORGANIZATION / APPLICATION


def _platform_data_home() -> Path | None:
    """The user's folder for application data, as QStandardPaths finds it; None where that fails."""
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) if appdata else None
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says relative paths are to be ignored, and Qt 6 does (it checks for a leading "/").
    return Path(xdg) if xdg.startswith("/") else Path.home() / ".local" / "share"
