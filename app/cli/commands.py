"""`latentdesk` on the command line.

    latentdesk generate [--model builtin|PATH] (--prompt TEXT | --prompt-file FILE) [--negative TEXT]
                        [--steps N] [--guidance G] [--sampler NAME] [--schedule NAME] [--seed S] [--width W --height H]
                        [--init-image PATH --strength S] [--batch N] [--clip-skip N] [--lora NAME|PATH[:WEIGHT] ...]
                        [--deep-cache [N]] [--deep-cache-blocks K] [--deep-cache-start F] [--guidance-cutoff [F]]
                        [--attention-maps DIR [--attention-steps SPEC]]     # app/cli/attention.py
                        (--out FILE.png | --out-dir DIR)        # --out: .png only, in a folder that exists
    latentdesk inspect MODEL|LORA|EMBEDDING [--prediction epsilon|v] [--json]
    latentdesk train autoencoder|diffusion|builtin ...   (app/cli/train.py)
    latentdesk eval shapes ... | latentdesk bench ...     (app/cli/measure.py)
    latentdesk models list [--json] | models get NAME|REPO_ID:FILE   (app/cli/models.py)

LoRAs and embeddings are found by name (the file's stem) in the models folder's loras/ and embeddings/
and in those of every LATENTDESK_MODEL_DIRS folder (core/fetch/addons.py); `<lora:name:0.8>` in the prompt
works as in A1111, and so does an embedding's name written in the prompt or the negative prompt.

Exit status 0 on success, 2 with a one-line reason on bad input.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from app.cli.attention import add_attention_arguments, attention_plan
from app.cli.measure import add_measure_commands
from app.cli.models import add_models_commands, models_dir
from app.cli.train import add_train_commands
from core import __version__
from core.atomic_files import writable_folder
from core.errors import LatentDeskError, ModelLoadError
from core.fetch.addons import addon_folders, find_addons
from core.limits import require
from core.request import DECODERS, INPAINT_AREAS, MASKED_CONTENT, GenerationRequest, check_request, seed_rule
from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_INTERVAL, DEEP_CACHE_START, GUIDANCE_CUTOFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentdesk", description="Latent diffusion on your own machine.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="say what a model, LoRA or embedding file is")
    inspect.add_argument("model", help="a .safetensors checkpoint, LoRA or embedding, or a diffusers model folder")
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
    g.add_argument("--schedule", type=schedule_name, metavar="NAME",
                   help="the noise levels the sampler steps through (A1111's schedule type; default: the model's, "
                        "else Automatic, the sampler's own; 'SGM Uniform' for 1-step SD-Turbo); one of: "
                        + ", ".join(SCHEDULE_NAMES))
    g.add_argument("--seed", type=int, help="default: random (printed)")
    g.add_argument("--width", type=int, help="default: the model's native size (img2img: the image's)")
    g.add_argument("--height", type=int)
    g.add_argument("--init-image", help="img2img: start from this image")
    g.add_argument("--strength", type=float, default=defaults.strength, help="img2img: how much to change (0-1]")
    g.add_argument("--batch", type=int, default=1, help="images per prompt")
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument("--prediction", choices=("epsilon", "v"), help="override the detected prediction type")
    g.add_argument("--lora", action="append", default=[], type=lora_argument, metavar="NAME|PATH[:WEIGHT]",
                   help="apply a LoRA (repeatable): its name in the LoRA folders or its .safetensors file, and a "
                        "weight (default 1; negative allowed), e.g. --lora ink:0.8; <lora:ink:0.8> in the prompt "
                        "works too")
    g.add_argument("--decoder", choices=DECODERS, default=defaults.decoder,
                   help="what draws the final image: the model's VAE, or 'taesd', a tiny decoder (a draft in a "
                        "fraction of the time; taesd_decoder.safetensors, or taesdxl for SDXL, beside the model or in "
                        "the models folder: `latentdesk models get taesd`)")
    add_inpaint_arguments(g)
    add_speedup_arguments(g)
    add_attention_arguments(g)
    out = g.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="the PNG to write (one image): the name must end in .png (a PNG keeps the "
                                   "settings; other formats are refused) and its folder must exist; a name "
                                   "already taken gets -1, -2, ... added, nothing is overwritten")
    out.add_argument("--out-dir", help="a folder (created if missing); images are numbered 00000.png, 00001.png, ...")


def schedule_name(text: str) -> str:
    """A schedule type in its own spelling, whatever the case typed; an unknown one is left for check_request."""
    from core.sampling.sampler_names import SCHEDULE_NAMES
    return {name.lower(): name for name in SCHEDULE_NAMES}.get(text.strip().lower(), text)


def lora_argument(text: str) -> tuple[str, float]:
    """"ink:0.8" -> ("ink", 0.8); "C:\\loras\\ink.safetensors" -> (that path, 1.0): the text splits at its last
    colon only when what follows is a number, so a Windows drive's colon stays in the path."""
    spec, colon, weight = text.rpartition(":")
    if colon and spec.strip():
        try:
            return spec.strip(), float(weight)
        except ValueError:
            pass
    return text.strip(), 1.0


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
    speed.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                       help="the networks' number format: bfloat16 is about 3x faster on CPUs with AMX and takes "
                            "half the memory; auto (the default): bfloat16 for a full-size model where this CPU runs "
                            "it faster, else float32 (core/precision.py). The PNG records bfloat16.")


def run_generate(args) -> int:
    from app.cli.progress import ProgressBar
    from core.fetch.catalogue import load_catalogue
    from core.generate import generate
    from core.images import default_size_for, load_image
    from core.inpaint import extend_canvas
    from core.metadata.hashing import model_hash
    from core.metadata.infotext import to_infotext
    from core.metadata.png_files import remove_stale_temporaries, save_mask_beside, save_png
    from core.precision import precision_dtype, precision_name
    from core.presets import preset_for

    # 1. Everything the user typed is checked before the model loads (seconds to minutes).
    prompts = read_prompts(args)
    addons = find_addons(addon_folders(models_dir()))
    check_loras_exist(prompts, tuple(args.lora), addons)
    images = len(prompts) * args.batch
    if args.out and images > 1:
        raise LatentDeskError(f"--out names one file but {images} images were asked for; use --out-dir")
    if (args.width is None) != (args.height is None):
        raise LatentDeskError("give both --width and --height, or neither")
    speedups = dict(deep_cache_interval=args.deep_cache, deep_cache_blocks=args.deep_cache_blocks,
                    deep_cache_start=args.deep_cache_start, guidance_cutoff=args.guidance_cutoff)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    # The model's defaults stand in for what the user left out: they always pass.
    inpainting = inpaint_fields(args)
    given = GenerationRequest(steps=pick(args.steps, 1), guidance=pick(args.guidance, 1.0), seed=seed,
                              width=pick(args.width, 512), height=pick(args.height, 512), batch=args.batch,
                              schedule=pick(args.schedule, "Automatic"),
                              clip_skip=args.clip_skip, init_image=args.init_image, strength=args.strength,
                              loras=tuple(args.lora), decoder=args.decoder, **inpainting, **speedups)
    seed_name, first_seed = seed_rule(max(images, 1), "--seed")     # every prompt's images follow on from it
    require(seed_name, seed, first_seed)
    check_request(given)
    out = output_path(args)
    remove_stale_temporaries(out.parent if args.out else out)     # the half-written saves of a crash
    maps = attention_plan(args)

    # 2. The model, then the images.
    path, model = load_named_model(args.model, prediction=args.prediction,
                                   dtype=precision_dtype(chosen_precision(args.model, args.precision)))
    precision = precision_name(model)   # recorded only when not exact
    tiny_decoder = find_tiny_decoder(path, model) if args.decoder == "taesd" else None
    width, height = args.width, args.height
    if width is None:
        if args.init_image:
            picture = load_image(args.init_image)
            if args.outpaint:
                picture, _, _ = extend_canvas(picture, None, inpainting["outpaint"])
            width, height = default_size_for(picture, max_side=model.family.default_size)
        else:
            width = height = model.family.default_size
    family = model.family
    # A few-step model's recipe (core/presets.py) stands in for what the user left out, else the family's.
    preset = preset_for(path, load_catalogue())
    steps, guidance, sampler, schedule = ((preset.steps, preset.guidance, preset.sampler, preset.schedule) if preset
                                          else (family.default_steps, family.default_guidance, family.default_sampler,
                                                "Automatic"))
    base = GenerationRequest(negative_prompt=args.negative, steps=pick(args.steps, steps),
                             guidance=pick(args.guidance, guidance), sampler=pick(args.sampler, sampler),
                             schedule=pick(args.schedule, schedule), width=width, height=height,
                             batch=args.batch,
                             clip_skip=args.clip_skip, init_image=args.init_image, strength=args.strength,
                             model=args.model, loras=tuple(args.lora), decoder=args.decoder, **inpainting,
                             **speedups)
    attention = maps.settings(base) if maps else None    # a step past the run is refused before the first image
    name, digest = model.name, model_hash(path)
    progress = ProgressBar(len(prompts) * args.batch)
    for p, prompt in enumerate(prompts):
        request = replace(base, prompt=prompt, seed=seed + p * args.batch)

        def on_step(step, first_image=p * args.batch, seed=request.seed):
            progress.update(first_image, step.i, step.total, f"seed {seed}")

        result = generate(request, model, on_step=on_step, addons=addons, tiny_decoder=tiny_decoder,
                          attention=attention)
        for note in result.notes:
            print(f"latentdesk: {note}", file=sys.stderr)
        for i, (image, image_seed) in enumerate(zip(result.images, result.seeds, strict=True)):
            infotext = to_infotext(replace(request, seed=image_seed, batch=1), name, digest, f"Latent Desk {__version__}",
                                   precision=precision, lora_hashes=result.loras, ti_hashes=result.embeddings)
            written = save_png(image, out, infotext)
            if result.mask is not None:
                save_mask_beside(result.mask, written)       # 00042.png's mask: 00042-mask.png
            progress.close()
            print(written)
            if maps:
                folder = maps.save(result.attention[i], image, written, images)
                print(f"latentdesk: attention maps of {written.name} in {folder}", file=sys.stderr)
    return 0


def add_inpaint_arguments(parser) -> None:
    paint = parser.add_argument_group("inpainting and outpainting", "repaint part of --init-image: white in the "
                                      "mask is repainted (core/inpaint.py)")
    paint.add_argument("--mask", help="the mask image (white = repaint; an image with transparency: its "
                                      "transparent part); another size is scaled to the picture's")
    paint.add_argument("--mask-blur", type=int, default=GenerationRequest().mask_blur, metavar="PX",
                       help="feather the mask's edge by this many pixels (default %(default)s)")
    paint.add_argument("--masked-content", choices=[c.replace(" ", "-") for c in MASKED_CONTENT], default="original",
                       help="what the masked part starts from: the picture (original), the colours around it (fill), "
                            "random or empty latent (latent-noise, latent-nothing: use --strength 1)")
    paint.add_argument("--inpaint-area", choices=INPAINT_AREAS, default="whole",
                       help="'masked': only the mask's region (plus --padding), generated at full size and pasted "
                            "back, so a small part gets the model's whole resolution")
    paint.add_argument("--padding", type=int, default=GenerationRequest().inpaint_padding, metavar="PX",
                       help="pixels around the mask for --inpaint-area masked (default %(default)s)")
    paint.add_argument("--outpaint", type=four_sides, metavar="LEFT,TOP,RIGHT,BOTTOM",
                       help="grow the canvas by these many pixels and paint the new part (e.g. 0,0,128,0)")


def four_sides(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(side) for side in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: four whole numbers of pixels, LEFT,TOP,RIGHT,BOTTOM") from None


def inpaint_fields(args) -> dict:
    """The request's inpainting fields from the command line; a mask or --outpaint without --init-image is refused."""
    if (args.mask or args.outpaint) and not args.init_image:
        raise LatentDeskError("--mask and --outpaint repaint a picture: give it with --init-image")
    return dict(mask=args.mask, mask_blur=args.mask_blur, masked_content=args.masked_content.replace("-", " "),
                inpaint_area=args.inpaint_area, inpaint_padding=args.padding,
                outpaint=tuple(args.outpaint) if args.outpaint else None)


def chosen_precision(spec: str, precision: str) -> str:
    """--precision auto: bfloat16 for a full-size model where this CPU runs it faster (core/precision.py)."""
    import torch

    from core.loading.footprint import weights_bytes
    from core.precision import AUTO, automatic_precision
    from core.resources import resolve_model

    if precision != AUTO:
        return precision
    try:
        return automatic_precision(weights_bytes(resolve_model(spec), torch.float32))
    except (LatentDeskError, OSError):
        return "float32"         # the load says what is wrong with the file


def find_tiny_decoder(path: Path, model):
    """The model's tiny decoder for --decoder taesd (beside it, or in the models folder), or None."""
    from core.loading.preview_decoders import load_preview_decoder, tiny_decoder_file

    config = model.vae.config
    found = tiny_decoder_file(path, model.family.name, config.scale_factor, (models_dir(),))
    return None if found is None else load_preview_decoder(found, config.z_channels, config.downsample_factor)


def check_loras_exist(prompts: list[str], loras: tuple, addons) -> None:
    """Every LoRA named (--lora, the prompts' tags) is a file, and the weights are usable: before the model loads."""
    from core.fetch.addons import lora_path
    from core.request import check_loras
    from core.text.lora_tags import split_lora_tags

    for prompt in prompts:
        for spec, _ in check_loras(loras + tuple(split_lora_tags(prompt)[1])):
            lora_path(spec, addons)


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
        writable_folder(out.parent, f"--out {out}")
        return out
    return writable_folder(Path(args.out_dir), "--out-dir")


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
    from core.loading.lora_describe import describe_addon
    from core.resources import resolve_model

    path = resolve_model(args.model)
    addon = describe_addon(path) if path.is_file() and path.suffix.lower() == ".safetensors" else None
    if addon is not None:
        print(json.dumps(addon, indent=2) if args.json else describe_text(path, addon))
        return 0
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


def describe_text(path: Path, addon: dict) -> str:
    """core.loading.lora_describe's description of a LoRA or an embedding, for people."""
    family = f"for {addon['family_title']}" if addon["family_title"] else "for a family it does not say"
    if addon["kind"] == "embedding":
        parts = ", ".join(f"{key}: {count} vector{'s' if count != 1 else ''} of {addon['widths'][key]}"
                          for key, count in addon["vectors"].items())
        return f"{path.name}: textual-inversion embedding {family}; {parts}"
    layers = ", ".join(f"{count} {network} layers" for network, count in addon["layers"].items())
    lines = [f"{path.name}: {' + '.join(addon['formats'])} {family}",
             f"  rank {', '.join(map(str, addon['ranks'])) or '-'}; changes {layers}"]
    if addon["not_understood"]:
        lines.append(f"  {addon['not_understood']} entries Latent Desk does not understand")
    if addon["trigger_words"]:
        lines.append(f"  trigger words: {', '.join(addon['trigger_words'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
