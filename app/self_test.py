"""`latentdesk --self-test [--model FILE]`: prove that this install (source or frozen) works.

Opens the real window (run it with QT_QPA_PLATFORM=offscreen on a machine without a display),
loads the built-in model (or FILE), types a prompt, presses Generate and checks what came
out: a finished job, previews during the steps, a PNG on disk of the requested size that is
not blank and carries its generation parameters. Everything it writes goes to a throwaway
folder, so a user's settings, history and pictures are never touched.

`run_self_test` returns None when every check holds, else the first failed check in words.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

PROMPT = "a large red star in the top left corner on a blue background"
SEED = 7
SIDE = 128


async def run_self_test(model: str | None = None, timeout: float = 300.0) -> str | None:
    from app.settings import AppPaths, open_settings
    from app.window import MainWindow
    from core.resources import builtin_model_path

    if not model and not builtin_model_path().is_file():
        return f"the built-in model is not installed ({builtin_model_path()} is missing)"
    folder = Path(tempfile.mkdtemp(prefix="latentdesk-self-test-"))
    paths = AppPaths(folder / "data", folder / "out", folder / "data" / "settings.ini")
    settings = open_settings(paths)
    if model:
        settings.setValue("model", str(Path(model).resolve()))
    window = MainWindow(paths, settings)    # starts loading the model once the event loop runs
    window.confirm_close = lambda unsaved, running: "discard"     # nothing of the user's to keep
    loaded = asyncio.get_running_loop().create_future()
    window.modelLoaded.connect(lambda spec: loaded.done() or loaded.set_result(None))
    window.modelFailed.connect(lambda message: loaded.done() or loaded.set_result(message))
    try:
        window.show()
        return await _check(window, loaded, timeout)
    finally:
        window.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _check(window, loaded: asyncio.Future, timeout: float) -> str | None:
    from PIL import Image

    from app.jobs import Finished

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        failure = await asyncio.wait_for(loaded, timeout)
    except TimeoutError:
        return f"the model did not load within {timeout:.0f} s"
    if failure:
        return failure

    panel = window.panel
    panel.live.setChecked(False)
    panel.prompt.setPlainText(PROMPT)
    panel.seed.set_seed(SEED)
    # The built-in model's own size; any other model is tried small too: this checks that the
    # pipeline works, and an SD-sized image would take minutes on a CPU.
    side = min(window.model.diffusion.family.default_size, SIDE)
    panel.width.setValue(side)
    panel.height.setValue(side)
    done = asyncio.Event()
    window.jobDone.connect(lambda message: done.set())
    window.generate()
    try:
        await asyncio.wait_for(done.wait(), max(1.0, deadline - loop.time()))
    except TimeoutError:
        return f"the generation did not finish within {timeout:.0f} s"

    result = window.last_message
    if not isinstance(result, Finished):
        return f"the generation did not finish: {result}"
    if result.save_error or not result.paths:
        return f"the image was not saved: {result.save_error or 'no file written'}"
    if result.previews_sent < 1:
        return "no preview was shown during the steps"
    path = result.paths[0]
    with Image.open(path) as image:
        image.load()
        size, parameters = image.size, image.info.get("parameters", "")
        spread = max(high - low for low, high in image.convert("RGB").getextrema())
    wanted = (result.request.width, result.request.height)
    if size != wanted:
        return f"{path.name} is {size[0]}x{size[1]}, not the {wanted[0]}x{wanted[1]} asked for"
    if spread < 16:
        return f"{path.name} is blank (every channel within {spread} levels)"
    if PROMPT not in parameters:
        return f"{path.name} does not carry its generation parameters"
    catalogue = _check_catalogue()
    if isinstance(catalogue, str):
        return catalogue
    print(f"self-test passed: {window.model.diffusion.name}, {result.request.steps} steps in {result.seconds:.2f} s, "
          f"{result.previews_sent} previews, {size[0]}x{size[1]} PNG with parameters; "
          f"{catalogue} models to download")
    return None


def _check_catalogue() -> int | str:
    """The catalogue's entries, or what is wrong: "Get models" needs the data file and the downloader's
    modules, which a bundle could leave out (only a download would show it, on a user's machine)."""
    from core.errors import LatentDeskError

    try:
        import core.fetch.download  # noqa: F401 - importable, with what it needs (http.client, huggingface_hub)
        from core.fetch.catalogue import load_catalogue
        return len(load_catalogue())
    except (ImportError, LatentDeskError, OSError) as error:
        return f"the model downloads would not work: {error}"
