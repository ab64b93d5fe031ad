"""app/paths.py works out the data folder without Qt, and gets the answer Qt gives the window: the
command line and the window must share one models folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QStandardPaths

from app.paths import APPLICATION, ORGANIZATION, default_data_dir
from app.settings import default_paths


@pytest.fixture
def named_like_the_app():
    """QCoreApplication's names as app/main.py sets them (QStandardPaths appends them), put back after."""
    before = QCoreApplication.organizationName(), QCoreApplication.applicationName()
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    yield
    QCoreApplication.setOrganizationName(before[0])
    QCoreApplication.setApplicationName(before[1])


def qt_data_dir() -> Path:
    return Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation))


def test_the_data_folder_is_the_one_qt_gives_the_window(named_like_the_app, monkeypatch):
    monkeypatch.delenv("LATENTDESK_DATA_DIR", raising=False)
    assert default_data_dir() == qt_data_dir()
    assert default_data_dir().parts[-2:] == (ORGANIZATION, APPLICATION)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG_DATA_HOME is read on Linux and other Unix")
@pytest.mark.parametrize("xdg", ["absolute", "relative/data", ""])
def test_xdg_data_home_is_read_as_qt_reads_it(named_like_the_app, monkeypatch, tmp_path, xdg):
    monkeypatch.delenv("LATENTDESK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share") if xdg == "absolute" else xdg)
    assert default_data_dir() == qt_data_dir()      # a relative one is ignored by both


def test_latentdesk_data_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTDESK_DATA_DIR", str(tmp_path / "portable"))
    assert default_data_dir() == tmp_path / "portable"
    monkeypatch.setenv("LATENTDESK_DATA_DIR", "~/somewhere")
    assert default_data_dir() == Path.home() / "somewhere"


def test_window_and_command_line_share_the_models_folder(named_like_the_app, monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTDESK_DATA_DIR", raising=False)
    assert default_paths().data_dir == default_data_dir()
    assert default_paths().models_dir == default_data_dir() / "models"
    assert default_paths().settings_file is None          # the platform's settings store
    monkeypatch.setenv("LATENTDESK_DATA_DIR", str(tmp_path))
    paths = default_paths()
    assert (paths.data_dir, paths.models_dir, paths.settings_file) == (tmp_path, tmp_path / "models",
                                                                       tmp_path / "settings.ini")


def test_app_paths_imports_no_qt():
    code = "import sys, app.paths; sys.exit(any(m.split('.')[0] in ('PySide6', 'shiboken6') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0
