"""`latentdesk`: the window with no arguments (or `latentdesk app`); anything else
(`generate`, `inspect`, `-h`, …) goes to the command line, `core/cli.py`, unchanged.

qasync runs asyncio on Qt's event loop, so the window can `await` work done in threads (model
loading, thumbnails) without blocking; the sampling loop has its own thread (`app/worker.py`).
"""

from __future__ import annotations

import asyncio
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "app":
        from core.cli import main as cli_main
        return cli_main(argv)
    return run_app(argv[1:])


def run_app(args: list[str]) -> int:
    """Start the GUI. `--smoke-test` opens the window, waits for the model, and exits 0: a check
    that a packaged build starts (run it with QT_QPA_PLATFORM=offscreen)."""
    import qasync
    from PySide6.QtWidgets import QApplication

    from app.settings import APPLICATION, ORGANIZATION
    from app.theme import apply_theme

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "latentdesk"])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setDesktopFileName("latentdesk")
    apply_theme(app)
    smoke = "--smoke-test" in args
    try:
        # asyncio.run(..., loop_factory=) is Python 3.12+; Runner has it from 3.11.
        with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
            return runner.run(_run(app, smoke))
    except asyncio.CancelledError:
        return 0


async def _run(app, smoke: bool) -> int:
    from app.settings import default_paths
    from app.window import MainWindow

    closed = asyncio.Event()
    window = MainWindow(default_paths())
    window.closed.connect(closed.set)
    app.aboutToQuit.connect(closed.set)
    window.show()
    if smoke:
        await _smoke_test(window)
        return 0
    await closed.wait()
    return 0


async def _smoke_test(window) -> None:
    deadline = asyncio.get_running_loop().time() + float(os.environ.get("LATENTDESK_SMOKE_TIMEOUT", "120"))
    while window.loading and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    print(f"Latent Desk window opened; model: {window.model.model.name if window.model else 'none'}")
    window.close()


if __name__ == "__main__":
    sys.exit(main())
