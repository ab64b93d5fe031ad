"""What per-step previews cost: txt2img wall time with a preview mode vs without (issue 5).

    python scripts/bench_preview.py [--model builtin] [--mode vae|auto|tiny|fast] [--runs 5] [--steps 20] [--size PX]
    python scripts/bench_preview.py --sd15 --mode auto --runs 3 --size 512   # SD1.5-shaped, random weights
    python scripts/bench_preview.py --sd15 --taesd --mode auto ...            # with a TAESD decoder beside it

Each run generates the same request twice, once with the app's previewer called after every step
(exactly as the worker thread calls it) and once without, alternating which goes first; the
medians and their ratio are printed. Previews are made in the sampling thread, so their cost is
added wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(args):
    from app.jobs import ReadyModel
    from app.models import load_preview_decoder_beside
    from core.loading.checkpoint import load_model
    from core.nets.latent_rgb import fit_latent_to_rgb
    from core.resources import resolve_model

    if args.sd15:
        from app.cli.bench.random_sd15 import write_full_size_sd15  # random weights, SD1.5 shapes
        # The 2 GB file is only needed until it is loaded (load_model reads it into memory).
        with tempfile.TemporaryDirectory(prefix="bench-preview-") as scratch:
            path = write_full_size_sd15(Path(scratch) / "sd15.safetensors")
            model = load_model(path)
            if args.taesd:   # random weights cost what TAESD's do; the app finds it by this name
                from core.atomic_files import save_tensors
                from core.nets.taesd import TaesdDecoder
                save_tensors(path.parent / "taesd_decoder.safetensors", TaesdDecoder().state_dict())
            decoder, note = load_preview_decoder_beside(path, model)
    else:
        path = resolve_model(args.model)
        model = load_model(path)
        decoder, note = load_preview_decoder_beside(path, model)   # as the app loads it
    if note:
        print(note, file=sys.stderr)
    return ReadyModel(model, str(path), None, fit_latent_to_rgb(model.vae), decoder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--sd15", action="store_true", help="an SD1.5-shaped model with random weights")
    parser.add_argument("--taesd", action="store_true", help="with --sd15: a TAESD decoder (random weights) beside it")
    parser.add_argument("--mode", default="vae", choices=("vae", "auto", "tiny", "fast"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int)
    args = parser.parse_args()
    if args.taesd and not args.sd15:
        parser.error("--taesd goes with --sd15 (a model of yours finds its TAESD file by itself)")

    from app.jobs import PreviewMode
    from app.preview import make_previewer
    from core.generate import generate
    from core.request import GenerationRequest

    loaded = load(args)
    family = loaded.diffusion.family
    size = args.size or family.default_size
    request = GenerationRequest(prompt="a large red star in the top left corner on a blue background",
                                steps=args.steps, guidance=family.default_guidance, sampler=family.default_sampler,
                                width=size, height=size)
    mode = PreviewMode(args.mode)

    frames = []   # per previewed run: the steps that drew a new image (Auto may keep the last one)

    def timed(with_preview: bool) -> float:
        previewer = make_previewer(mode, loaded) if with_preview else None   # fresh per run, as the worker does
        drawn = []
        on_step = (lambda step: drawn.append(previewer(step, False) is not None)) if previewer else None
        started = time.perf_counter()
        generate(request, loaded.diffusion, on_step=on_step)
        if previewer:
            frames.append(sum(drawn))
        return time.perf_counter() - started

    timed(True)   # warm-up
    plain, previewed = [], []
    for run in range(args.runs):
        order = (False, True) if run % 2 == 0 else (True, False)
        for with_preview in order:
            (previewed if with_preview else plain).append(timed(with_preview))
        print(f"run {run + 1}: without {plain[-1]:.3f} s, with {mode.label} {previewed[-1]:.3f} s", flush=True)
    a, b = statistics.median(plain), statistics.median(previewed)
    print(f"{loaded.diffusion.name} {size}x{size}, {args.steps} steps: median without previews {a:.3f} s, "
          f"with '{mode.label}' previews {b:.3f} s: {100 * (b / a - 1):+.1f} % wall time; new frames per run "
          f"{frames[1:]} of {args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
