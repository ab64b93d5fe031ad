"""`latentdesk`: the window with no arguments (or `latentdesk app`); anything else
(`generate`, `inspect`, `-h`, …) goes to the command line, `app/cli/commands.py`, unchanged.

qasync runs asyncio on Qt's event loop, so the window can `await` work done in threads (model
loading, thumbnails) without blocking; the sampling loop has its own thread (`app/worker.py`).
"""

from __future__ import annotations

import asyncio
import os
import sys

APP_FLAGS = ("--self-test", "--smoke-test")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _keep_output_when_windowed()
    if argv and argv[0] in APP_FLAGS:
        return run_app(argv)
    if argv and argv[0] != "app":
        from app.cli.commands import main as cli_main
        return cli_main(argv)
    return run_app(argv[1:])


def _keep_output_when_windowed() -> None:
    """A windowed build (PyInstaller --windowed, pythonw) starts with no stdout/stderr: send them to
    a log file, so messages, warnings and tracebacks are kept instead of failing on write."""
    if sys.stdout is not None and sys.stderr is not None:
        return
    from pathlib import Path
    folder = Path(os.environ.get("LATENTDESK_DATA_DIR") or Path.home() / ".latentdesk").expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "latentdesk.log", "a", encoding="utf-8", buffering=1)   # noqa: SIM115 (process-long)
    except OSError:
        log = open(os.devnull, "w", encoding="utf-8")   # noqa: SIM115
    sys.stdout = sys.stdout or log
    sys.stderr = sys.stderr or log


def run_app(args: list[str]) -> int:
    """Start the GUI. `--smoke-test` opens the window, waits for the model, and exits 0: a check
    that a packaged build starts. `--self-test [--model FILE]` generates one image through the
    window and checks it (app/self_test.py); exit status 1 and the reason if a check fails. Run
    both with QT_QPA_PLATFORM=offscreen where there is no display."""
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
            if "--self-test" in args:
                return runner.run(_self_test(args))
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
    await asyncio.sleep(0)   # one turn of the event loop: the window is painted
    _report_startup("window shown")
    if smoke:
        await _smoke_test(window)
        return 0
    await closed.wait()
    return 0


async def _self_test(args: list[str]) -> int:
    from app.self_test import run_self_test

    model = args[args.index("--model") + 1] if "--model" in args[:-1] else None
    failure = await run_self_test(model, float(os.environ.get("LATENTDESK_SELF_TEST_TIMEOUT", "300")))
    if failure:
        print(f"self-test FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


async def _smoke_test(window) -> None:
    deadline = asyncio.get_running_loop().time() + float(os.environ.get("LATENTDESK_SMOKE_TIMEOUT", "120"))
    while window.loading and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    print(f"Latent Desk window opened; model: {window.model.diffusion.name if window.model else 'none'}")
    _report_startup("model ready" if window.model else "no model")
    window.close()


def _report_startup(what: str) -> None:
    """For scripts/bench_startup.py: seconds since it launched this process (it sets the variable)."""
    launched = os.environ.get("LATENTDESK_LAUNCHED_AT")
    if launched:
        import time
        print(f"startup: {what} after {time.time() - float(launched):.3f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
