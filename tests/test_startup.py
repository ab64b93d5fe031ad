"""The window opens before the engine loads: its modules must not import torch (issue 6: fast start).

torch and transformers take seconds to import; the window module imports only Qt and light
modules, and the engine is imported by the model-loading and generation threads."""

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ("torch", "transformers", "numpy", "safetensors")


def test_the_window_module_imports_without_the_engine():
    script = textwrap.dedent(f"""
        import sys

        class NoEngine:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ENGINE!r}:
                    raise ImportError(f"the window must not import {{name}} before it is shown")

        sys.meta_path.insert(0, NoEngine())
        import app.main, app.window, app.worker, app.models, app.jobs, app.history, app.settings
        assert hasattr(app.window, "MainWindow")
        print(sorted(m for m in sys.modules if m.startswith("app.")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'app.window'" in result.stdout and "'app.widgets.controls'" in result.stdout


def test_the_window_is_shown_within_two_seconds_of_launch(tmp_path):
    """From source, launch to first paint; 0.25 s measured here (scripts/bench_startup.py), so the
    bound leaves room for a slow CI machine while catching the engine (seconds of torch import) creeping in."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LATENTDESK_DATA_DIR=str(tmp_path),
               LATENTDESK_OUTPUT_DIR=str(tmp_path / "out"), LATENTDESK_LAUNCHED_AT=repr(time.time()))
    result = subprocess.run([sys.executable, "-m", "app", "--smoke-test"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    times = dict(re.findall(r"startup: (.+?) after ([\d.]+) s", result.stdout))
    assert float(times["window shown"]) <= 2.0, result.stdout


def test_the_controls_fit_their_panel_in_the_themed_window(tmp_path):
    """The controls' content must not be wider than the panel that shows it: the panel scrolls only
    vertically, so anything wider is cut off on the right (the theme's padding widens every control,
    so this runs in its own process with the real theme, at the window's default size)."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        import qasync
        from PySide6.QtWidgets import QApplication, QScrollArea
        from app.settings import AppPaths, open_settings
        from app.theme import apply_theme
        from app.window import MainWindow

        app = QApplication([])
        apply_theme(app)
        folder = Path({str(tmp_path)!r})
        paths = AppPaths(folder / "data", folder / "out", folder / "settings.ini")

        async def measure():
            window = MainWindow(paths, open_settings(paths), builtin=None)
            window.confirm_close = lambda unsaved, running: "discard"
            window.show()
            await asyncio.sleep(0.5)
            area = window.panel.findChildren(QScrollArea)[0]
            print("content", area.widget().minimumSizeHint().width(), "shown", area.viewport().width())
            window.close()

        with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
            runner.run(measure())
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LATENTDESK_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    content, shown = map(int, re.search(r"content (\d+) shown (\d+)", result.stdout).groups())
    assert content <= shown, result.stdout
