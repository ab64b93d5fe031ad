"""docs/screenshot.png: the main window mid-generation with the built-in model (issue 5).

    QT_QPA_PLATFORM=offscreen python scripts/screenshot.py [--out docs/screenshot.png] [--model FILE]
                                                           [--word-maps WORD]

Opens the real window (1280 x 800, throwaway data and output folders), makes a few images so the
history strip has something in it, then starts one more and grabs the window when that run's
preview reaches half of its steps: the progress bar, the half-formed image and the controls as
a user sees them.

The LoRA panel shows LoRAs and embeddings as a user with a few would see them: the files are empty
stand-ins in the throwaway models folder (the built-in model has no LoRAs made for it), listed by name,
and added to the panel only once the shown run has started, so no run ever loads them.

With --word-maps WORD the shown run is made with "Word maps" on and grabbed when it has finished, WORD's map
pinned over the picture (issue #25's word strip under it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HISTORY_PROMPTS = ("a small yellow circle at the bottom right on a black background",
                   "a green triangle on a white background", "a large purple diamond on orange")
SHOWN_PROMPT = "a large red star in the top left corner on a blue background"
LORAS = {"soft-pastels": 0.8, "paper-texture": 0.35, "bold-outlines": None}    # name: weight in the panel (None: not added)
EMBEDDINGS = ("blurry-shapes", "noisy-edges")


async def capture_word_maps(window, out: Path, word: str) -> None:
    """The shown prompt's run with word maps, finished, `word`'s map pinned over the picture."""
    window.panel.word_maps.setChecked(True)
    await run(window, SHOWN_PROMPT, 7, then=lambda: show_loras(window))
    chip = window.word_strip.chip(word)
    if chip is None:
        raise SystemExit(f"{word!r} is not a word of {SHOWN_PROMPT!r}")
    chip.click()
    await asyncio.sleep(0.2)        # the strip's layout settles (a posted event) before the grab
    window.grab().save(str(out))
    print(f"wrote {out} ({word!r} pinned: {chip.word_map.total:.1%} of the prompt's attention)")


async def capture(window, out: Path, word_maps: str | None = None) -> None:
    failed = []
    window.modelFailed.connect(failed.append)
    while window.model is None:
        if failed:
            raise RuntimeError(f"the model did not load: {failed[0]}")
        await asyncio.sleep(0.05)
    window.panel.live.setChecked(False)
    for seed, prompt in enumerate(HISTORY_PROMPTS, start=1):
        await run(window, prompt, seed)
    if word_maps:
        await capture_word_maps(window, out, word_maps)
        return
    window.panel.steps.setValue(40)     # more steps: the halfway frame comes while the run is still going
    grabbed = asyncio.get_running_loop().create_future()

    def on_preview(preview) -> None:
        if not grabbed.done() and preview.i + 1 >= preview.total // 2:
            window.grab().save(str(out))
            grabbed.set_result(preview.i + 1)

    window.previewShown.connect(on_preview)
    await run(window, SHOWN_PROMPT, 7, then=lambda: show_loras(window))
    print(f"wrote {out} (at step {await grabbed} of 40)")


async def run(window, prompt: str, seed: int, then=None) -> None:
    done = asyncio.get_running_loop().create_future()
    window.jobDone.connect(lambda message: done.done() or done.set_result(message))
    window.panel.prompt.setPlainText(prompt)
    window.panel.seed.set_seed(seed)
    window.generate()
    if then is not None:
        then()
    await done


def show_loras(window) -> None:
    """The stand-in LoRAs into the panel, after the run took its request (so it never loads them)."""
    for name, weight in LORAS.items():
        if weight is not None:
            window.panel.loras.add(name, weight)


def write_stand_ins(models_dir: Path) -> None:
    for folder, names in (("loras", LORAS), ("embeddings", EMBEDDINGS)):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (models_dir / folder / f"{name}.safetensors").write_bytes(b"")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--model", help="default: the built-in model")
    parser.add_argument("--word-maps", metavar="WORD", help="finish the shown run with word maps, WORD's pinned")
    args = parser.parse_args()

    import qasync
    from PySide6.QtWidgets import QApplication

    from app.settings import AppPaths, open_settings
    from app.theme import apply_theme
    from app.widgets.model_sources import OFFERED_KEY
    from app.window import MainWindow

    app = QApplication([])
    apply_theme(app)
    folder = Path(tempfile.mkdtemp(prefix="latentdesk-screenshot-"))
    paths = AppPaths(folder / "data", folder / "out", folder / "settings.ini")
    write_stand_ins(paths.models_dir)
    settings = open_settings(paths)
    settings.setValue(OFFERED_KEY, True)    # the first-start "Get models" banner is not what this shows
    if args.model:
        settings.setValue("model", str(Path(args.model).resolve()))

    async def session() -> None:   # the window's own tasks need the running loop, as in app/main.py
        window = MainWindow(paths, settings)
        window.resize(1280, 800)
        window.show()
        try:
            await capture(window, Path(args.out), args.word_maps)
        finally:
            window.close()      # stops the generation thread before the app goes

    with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
        runner.run(session())
    return 0


if __name__ == "__main__":
    sys.exit(main())
