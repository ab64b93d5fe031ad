"""`latentdesk` on the command line.

    latentdesk generate [--model builtin|PATH] (--prompt TEXT | --prompt-file FILE) [--negative TEXT]
                        [--steps N] [--guidance G] [--sampler NAME] [--schedule NAME] [--seed S] [--width W --height H]
                        [--init-image PATH --strength S] [--batch N] [--clip-skip N]
                        [--deep-cache [N]] [--deep-cache-blocks K] [--deep-cache-start F] [--guidance-cutoff [F]]
                        (--out FILE.png | --out-dir DIR)        # --out: .png only, in a folder that exists
    latentdesk inspect MODEL [--prediction epsilon|v] [--json]
    latentdesk train autoencoder|diffusion|builtin ...   (app/cli/train.py)
    latentdesk eval shapes ... | latentdesk bench ...     (app/cli/measure.py)
    latentdesk models list [--json] | models get NAME|REPO_ID:FILE   (app/cli/models.py)

Exit status 0 on success, 2 with a one-line reason on bad input.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from app.cli.measure import add_measure_commands
from app.cli.models import add_models_commands
from app.cli.train import add_train_commands
from core import __version__
from core.errors import LatentDeskError, ModelLoadError
from core.limits import require
from core.request import GenerationRequest, check_request, seed_rule
from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_INTERVAL, DEEP_CACHE_START, GUIDANCE_CUTOFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentdesk", description="Latent diffusion on your own machine.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="load a model and say what it is")
    inspect.add_argument("model", help="a .safetensors checkpoint or a diffusers model folder")
    inspect.add_argument("--prediction", choices=("epsilon", "v"), help="override the detected prediction type")
    inspect.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_generate_command(commands)
    add_train_commands(commands)
    add_measure_commands(commands)
    add_models_commands(commands)
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "handler"):  # train, eval, bench, models
            return args.handler(args)
        return {"inspect": run_inspect, "generate": run_generate}[args.command](args)
    except LatentDeskError as e:
        return refuse(str(e))
    except OSError as e:      # a path the user gave that cannot be read or written
        return refuse(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        print("latentdesk: interrupted", file=sys.stderr)
        return 130


def refuse(reason: str) -> int:
    """Exit status 2 and the reason on one line: a message built from a file's contents can hold newlines."""
    print(f"latentdesk: {' '.join(reason.split())}", file=sys.stderr)
    return 2


def add_generate_command(commands) -> None:
    from core.sampling.sampler_names import SCHEDULE_NAMES
    from core.sampling.samplers import SAMPLERS
    defaults = GenerationRequest()
    g = commands.add_parser("generate", help="make images from a prompt (txt2img) or an image (img2img)")
    g.add_argument("--model", default="builtin", help="'builtin' or a .safetensors file / diffusers folder")
    what = g.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="what to draw (A1111 emphasis syntax works: (word:1.3))")
    what.add_argument("--prompt-file", help="one prompt per line; image i uses seed + i")
    g.add_argument("--negative", default="", help="what to steer away from")
    g.add_argument("--steps", type=int, help="default: the model's (20)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    g.add_argument("--sampler", help="default: the model's; one of: " + ", ".join(SAMPLERS))
    g.add_argument("--schedule", type=schedule_name, default=defaults.schedule, metavar="NAME",
                   help="the noise levels the sampler steps through (A1111's schedule type; default: Automatic, "
                        "the sampler's own; 'SGM Uniform' for 1-step SD-Turbo); one of: " + ", ".join(SCHEDULE_NAMES))
    g.add_argument("--seed", type=int, help="default: random (printed)")
    g.add_argument("--width", type=int, help="default: the model's native size (img2img: the image's)")
    g.add_argument("--height", type=int)
    g.add_argument("--init-image", help="img2img: start from this image")
    g.add_argument("--strength", type=float, default=defaults.strength, help="img2img: how much to change (0-1]")
    g.add_argument("--batch", type=int, default=1, help="images per prompt")
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument("--prediction", choices=("epsilon", "v"), help="override the detected prediction type")
    add_speedup_arguments(g)
    out = g.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="the PNG to write (one image): the name must end in .png (a PNG keeps the "
                                   "settings; other formats are refused) and its folder must exist; a name "
                                   "already taken gets -1, -2, ... added, nothing is overwritten")
    out.add_argument("--out-dir", help="a folder (created if missing); images are numbered 00000.png, 00001.png, ...")


def schedule_name(text: str) -> str:
    """A schedule type in its own spelling, whatever the case typed; an unknown one is left for check_request."""
    from core.sampling.sampler_names import SCHEDULE_NAMES
    return {name.lower(): name for name in SCHEDULE_NAMES}.get(text.strip().lower(), text)


def add_speedup_arguments(parser) -> None:
    speed = parser.add_argument_group("approximate speed-ups", "off by default; faster, and the image changes a "
                                      "little (core/sampling/speedups.py)")
    speed.add_argument("--deep-cache", type=int, nargs="?", const=DEEP_CACHE_INTERVAL, default=1, metavar="N",
                       help="DeepCache: run the whole UNet on one step in N and reuse its deep features on the "
                            f"others (N left out: {DEEP_CACHE_INTERVAL}; 1 = off)")
    speed.add_argument("--deep-cache-blocks", type=int, default=DEEP_CACHE_BLOCKS, metavar="K",
                       help=f"UNet blocks still run on the reused steps, shallowest first (default {DEEP_CACHE_BLOCKS})")
    speed.add_argument("--deep-cache-start", type=float, default=DEEP_CACHE_START, metavar="F",
                       help=f"this first fraction of the steps runs in full (default {DEEP_CACHE_START})")
    speed.add_argument("--guidance-cutoff", type=float, nargs="?", const=GUIDANCE_CUTOFF, default=0.0, metavar="F",
                       help=f"run the last fraction F of the steps without guidance (F left out: {GUIDANCE_CUTOFF})")
    speed.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                       help="the networks' number format: bfloat16 is about 3x faster on CPUs with AMX and takes "
                            "half the memory (core/precision.py)")


def run_generate(args) -> int:
    from app.cli.progress import ProgressBar
    from core.generate import generate
    from core.images import default_size_for, load_image
    from core.metadata.hashing import model_hash
    from core.metadata.infotext import to_infotext
    from core.metadata.png_files import remove_stale_temporaries, save_png
    from core.precision import precision_dtype, precision_name

    # 1. Everything the user typed is checked before the model loads (seconds to minutes).
    prompts = read_prompts(args)
    images = len(prompts) * args.batch
    if args.out and images > 1:
        raise LatentDeskError(f"--out names one file but {images} images were asked for; use --out-dir")
    if (args.width is None) != (args.height is None):
        raise LatentDeskError("give both --width and --height, or neither")
    speedups = dict(deep_cache_interval=args.deep_cache, deep_cache_blocks=args.deep_cache_blocks,
                    deep_cache_start=args.deep_cache_start, guidance_cutoff=args.guidance_cutoff)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    # The model's defaults stand in for what the user left out: they always pass.
    given = GenerationRequest(steps=pick(args.steps, 1), guidance=pick(args.guidance, 1.0), seed=seed,
                              width=pick(args.width, 512), height=pick(args.height, 512), batch=args.batch,
                              schedule=args.schedule,
                              clip_skip=args.clip_skip, init_image=args.init_image, strength=args.strength, **speedups)
    seed_name, first_seed = seed_rule(max(images, 1), "--seed")     # every prompt's images follow on from it
    require(seed_name, seed, first_seed)
    check_request(given)
    out = output_path(args)
    remove_stale_temporaries(out.parent if args.out else out)     # the half-written saves of a crash

    # 2. The model, then the images.
    path, model = load_named_model(args.model, prediction=args.prediction, dtype=precision_dtype(args.precision))
    precision = precision_name(model)   # recorded only when not exact
    width, height = args.width, args.height
    if width is None:
        if args.init_image:
            width, height = default_size_for(load_image(args.init_image), max_side=model.family.default_size)
        else:
            width = height = model.family.default_size
    family = model.family
    base = GenerationRequest(negative_prompt=args.negative, steps=pick(args.steps, family.default_steps),
                             guidance=pick(args.guidance, family.default_guidance),
                             sampler=pick(args.sampler, family.default_sampler), schedule=args.schedule,
                             width=width, height=height,
                             batch=args.batch,
                             clip_skip=args.clip_skip, init_image=args.init_image, strength=args.strength,
                             model=args.model, **speedups)
    name, digest = model.name, model_hash(path)
    progress = ProgressBar(len(prompts) * args.batch)
    for p, prompt in enumerate(prompts):
        request = replace(base, prompt=prompt, seed=seed + p * args.batch)

        def on_step(step, first_image=p * args.batch, seed=request.seed):
            progress.update(first_image, step.i, step.total, f"seed {seed}")

        result = generate(request, model, on_step=on_step)
        for image, image_seed in zip(result.images, result.seeds, strict=True):
            infotext = to_infotext(replace(request, seed=image_seed, batch=1), name, digest, f"Latent Desk {__version__}",
                                   precision=precision)
            written = save_png(image, out, infotext)
            progress.close()
            print(written)
    return 0


def pick(given, default):
    return default if given is None else given


def output_path(args) -> Path:
    """--out's file or --out-dir's folder (created), checked: a mistake here must not cost a model load,
    nor leave a surprise behind (save_png makes a folder of any name not ending in .png)."""
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise LatentDeskError(f"--out {out}: the name must end in .png; Latent Desk writes PNG files, which "
                                  "keep the settings (for a folder of numbered images, use --out-dir)")
        if out.is_dir():
            raise LatentDeskError(f"--out {out} is a folder; to write numbered images into it, use --out-dir")
        if not out.parent.is_dir():
            problem = "is not a folder" if out.parent.exists() else "does not exist"
            raise LatentDeskError(f"--out {out}: the folder {out.parent} {problem}")
        return out
    folder = Path(args.out_dir)
    if folder.exists() and not folder.is_dir():
        raise LatentDeskError(f"--out-dir {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LatentDeskError(f"--out-dir {folder}: the folder cannot be made ({e.strerror or e})") from None
    return folder


def load_named_model(spec: str, **options):
    """(path, model) for the model the user named. The loader says what is wrong with a file
    (ModelLoadError); whatever else a damaged or hostile file makes it raise is told in one line too,
    never as a traceback: the file is the user's input."""
    from core.loading.checkpoint import load_model
    from core.resources import resolve_model

    path = resolve_model(spec)
    try:
        return path, load_model(path, **options)
    except LatentDeskError:
        raise
    except MemoryError:
        raise ModelLoadError(path, "there is not enough memory to load it") from None
    except Exception as e:      # noqa: BLE001 - RecursionError, ValueError, KeyError, ... from the file's contents
        raise ModelLoadError(path, f"cannot be loaded ({type(e).__name__}: {e})") from None


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    try:
        text = Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LatentDeskError(f"{args.prompt_file}: cannot read the prompt file ({e})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise LatentDeskError(f"{args.prompt_file}: no prompts in the file (one per line)")
    return prompts


def run_inspect(args) -> int:
    _, model = load_named_model(args.model, prediction=args.prediction)
    report = {
        "family": model.family.name,
        "title": model.family.title,
        "prediction": model.prediction,
        "prediction_source": model.prediction_source,
        "latent_scale": model.vae.config.scale_factor,
        "parameters": {name: sum(p.numel() for p in net.parameters())
                       for name, net in (("unet", model.unet), ("vae", model.vae), ("text", model.text_encoder))},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{model.name}: {report['title']}, predicts {report['prediction']} "
              f"({report['prediction_source']}), latent scale {report['latent_scale']}")
        for name, count in report["parameters"].items():
            print(f"  {name:5s} {count / 1e6:8.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
