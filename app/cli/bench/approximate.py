"""The approximate speed-ups (core/sampling/speedups.py) against the exact image: time and PSNR, end to end.

    approx_pair_case(pair, device, steps) -> Case          the SD1.5-shaped random-weight model (tiny: --quick)
    approx_builtin_case(device, dtype, steps) -> Case | None   the built-in model (None: not installed)
    approx_case(name, title, model, request, device) -> Case

Contenders: "exact" (the baseline), "deep cache", "guidance cut-off" and "both": the same request and
seed with each speed-up at the defaults the CLI and the app use; and, when the exact run is float32,
"bfloat16": the exact request on a bfloat16 copy of the networks (core/precision.py). The warm-up runs every mode once,
untimed, and records in the case's details what each made: the PSNR of its decoded 8-bit image
against the exact one, and how many UNet calls ran the deep blocks. A random-weight model (the
SD1.5-shaped one) paints noise, so its PSNR says little about what a user would see; its timing is
what it is measured for. The built-in model's PSNR is the quality number.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from app.cli.bench.cases import PROMPT, builtin_request, load_builtin
from app.cli.bench.pair import ModelPair
from app.cli.bench.timing import Case, timed
from core.generate import generate
from core.images import psnr
from core.model import DiffusionModel
from core.precision import at_precision
from core.request import GenerationRequest
from core.sampling.speedups import DEEP_CACHE_INTERVAL, GUIDANCE_CUTOFF

DEEP_CACHE = {"deep_cache_interval": DEEP_CACHE_INTERVAL}
CUTOFF = {"guidance_cutoff": GUIDANCE_CUTOFF}
MODES = {"exact": {}, "deep cache": DEEP_CACHE, "guidance cut-off": CUTOFF, "both": DEEP_CACHE | CUTOFF}


def counted_run(model: DiffusionModel, request: GenerationRequest) -> tuple[Image.Image, dict]:
    """One generation, counting UNet calls, the calls that ran the middle block, and the rows they saw."""
    calls = {"calls": 0, "deep": 0, "rows": 0}

    def every_call(module, inputs):
        calls["calls"] += 1
        calls["rows"] += inputs[0].shape[0]

    def deep(module, inputs):
        calls["deep"] += 1

    hooks = [model.unet.out.register_forward_pre_hook(every_call),
             model.unet.middle_block.register_forward_pre_hook(deep)]
    try:
        image = generate(request, model).images[0]
    finally:
        for hook in hooks:
            hook.remove()
    return image, calls


def approx_case(name: str, title: str, model: DiffusionModel, request: GenerationRequest, device) -> Case:
    requests = {mode: replace(request, **settings) for mode, settings in MODES.items()}
    exact = requests["exact"]
    models = dict.fromkeys(requests, model)
    if model.dtype == torch.float32:
        requests["bfloat16"], models["bfloat16"] = exact, at_precision(model, torch.bfloat16)
    details = {"size": exact.width, "steps": exact.steps, "sampler": exact.sampler, "guidance": exact.guidance,
               "seed": exact.seed, "prompt": exact.prompt,
               "settings": {mode: {key: getattr(r, key) for key in ("deep_cache_interval", "deep_cache_blocks",
                                                                    "deep_cache_start", "guidance_cutoff")}
                            for mode, r in requests.items()},
               "psnr_db": {}, "unet_calls": {}}

    def warmup() -> None:
        """Every mode once: first-call costs paid, and what each computed written down."""
        with torch.no_grad():
            images = {}
            for mode, r in requests.items():
                images[mode], details["unet_calls"][mode] = counted_run(models[mode], r)
        details["psnr_db"] = {mode: round(psnr(image, images["exact"]), 2)
                              for mode, image in images.items() if mode != "exact"}

    contenders = {mode: timed(lambda r=r, m=models[mode]: generate(r, m), device) for mode, r in requests.items()}
    return Case(name, title, contenders, baseline="exact", details=details, warmup=warmup)


def approx_pair_case(pair: ModelPair, device, steps: int | None = None) -> Case:
    """On the bench's random-weight models (SD1.5-shaped, or tiny with --quick), at the spec's speed-ups size."""
    spec, model = pair.spec, pair.ours
    size = spec.approx_size or spec.image_size
    request = GenerationRequest(prompt=PROMPT, steps=steps or spec.approx_steps, guidance=spec.guidance,
                                sampler=model.family.default_sampler, width=size, height=size)
    return approx_case("approx", f"speed-ups, {spec.name}, {size}x{size}, {request.steps} steps",
                       model, request, device)


def approx_builtin_case(device, dtype: torch.dtype, steps: int | None = None) -> Case | None:
    """On the built-in model, as the app runs it; None when there is none."""
    model = load_builtin(device, dtype)
    if model is None:
        return None
    request = builtin_request(model, steps)
    return approx_case("approx-builtin", f"speed-ups, built-in model, {request.width}x{request.height}, "
                       f"{request.steps} steps", model, request, device)
