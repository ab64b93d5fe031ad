"""What the user asked for: one frozen value, written into the PNG and read back from it, and the rules
its settings keep.

    check_request(request)               BrokenRule (a LatentDeskError) for the first setting that cannot work
    check_field(field, value, request)   `value` if `field` may hold it in `request`, else BrokenRule
    seed_rule(images, name)              what a message calls a run's first seed, and its rule

Each rule is written once, here (the number rules themselves in core/limits.py): generate() and the
command line check a request with them before anything large is allocated, and the infotext reader
(core/metadata/infotext.py) checks each value it reads with them, so a setting an image restores is
one generate() takes. No torch is imported: the window builds requests before the engine loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from core.errors import LatentDeskError
from core.limits import ANY_NUMBER, FRACTION, BrokenRule, OneOf, Span, Whole, check_size, require
from core.loading.lora_limits import MAX_LORAS, MAX_WEIGHT
from core.sampling.sampler_names import AUTOMATIC, SCHEDULE_NAMES
from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_START, MAX_DEEP_CACHE_INTERVAL

MAX_SEED = 2**64 - 1       # torch.Generator.manual_seed's range; A1111's UI stays below 2**32
MAX_BATCH = 64
# Far past any sampler's gain (A1111's slider stops at 150); it keeps a typo such as --steps 2000000 from
# running for days, or from allocating its schedule at all.
MAX_STEPS = 10_000
DECODERS = ("vae", "taesd")     # the final image through the model's VAE, or a tiny decoder (a draft)
# Inpainting's choices, by A1111's names (core/inpaint.py says what each does).
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")
INPAINT_AREAS = ("whole", "masked")
MAX_MASK_BLUR = 256             # px; a feather past this is the whole picture
MAX_OUTPAINT = 2048             # px a side (also the most padding around a mask); the canvas must still fit


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.0          # classifier-free guidance scale; 1 = no guidance
    sampler: str = "DPM++ 2M Karras"  # A1111's names (core/sampling/samplers.py SAMPLERS)
    # A1111's schedule types (core/sampling/schedule_types.py); "Automatic" is the sampler's own sigmas,
    # "DPM++ 2M Karras"'s included (core/sampling/sampler_names.py resolve_schedule).
    schedule: str = AUTOMATIC
    seed: int = 0                  # image i of a batch uses seed + i
    width: int = 512
    height: int = 512
    batch: int = 1
    clip_skip: int = 1             # A1111's counting: 1 = the family's own layer
    init_image: str | None = None  # img2img: path of the starting image
    strength: float = 0.75         # img2img: 1 = start from pure noise, 0.1 = keep nearly all of it
    model: str = "builtin"         # "builtin" or the model's path; the PNG records its name and hash
    # Approximate speed-ups (core/sampling/speedups.py), off by default; the PNG records them only when on.
    deep_cache_interval: int = 1   # DeepCache: the whole UNet every N-th step, deep features reused between; 1 = off
    deep_cache_blocks: int = DEEP_CACHE_BLOCKS  # the shallow UNet blocks that still run on the reused steps
    deep_cache_start: float = DEEP_CACHE_START  # DeepCache: this first fraction of the steps runs in full
    guidance_cutoff: float = 0.0   # this last fraction of the steps runs unguided (scale 1); 0 = off
    # LoRAs besides the prompt's <lora:name:weight> tags: (name or path, weight) each; a name is a file's stem
    # in the LoRA folders (core/fetch/addons.py). The PNG records them as "LoRAs: name:0.8, other:-0.5".
    loras: tuple[tuple[str, float], ...] = ()

    # Inpainting (core/inpaint.py, A1111's names): white in the mask is repainted; `outpaint` first grows the
    # canvas by (left, top, right, bottom) pixels and masks the new part.
    mask: str | None = None        # path of the mask image
    mask_blur: int = 4             # px of feather
    masked_content: str = "original"   # "original" | "fill" | "latent noise" | "latent nothing"
    inpaint_area: str = "whole"    # "whole" | "masked" (only the masked region, at full resolution)
    inpaint_padding: int = 32      # px around the mask, for inpaint_area "masked"
    outpaint: tuple[int, int, int, int] | None = None
    # Which network turns the final latent into pixels: "vae" (the model's own) or "taesd", a tiny decoder
    # (TAESD, or the model's own .preview.safetensors): a draft in a fraction of the time, re-decodable later.
    decoder: str = "vae"

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None


LORA_WEIGHT = Span(-MAX_WEIGHT, MAX_WEIGHT)     # negative weights are the LoRA's opposite, and used

# The fields that set the approximate speed-ups (core/sampling/speedups.py).
SPEEDUP_FIELDS = ("deep_cache_interval", "deep_cache_blocks", "deep_cache_start", "guidance_cutoff")


def field_rules(request: GenerationRequest) -> dict[str, tuple[str, Whole | Span]]:
    """Each checked field but the size (check_size): what a message calls it, and its rule.

    In the order check_request tries them. The seed's top depends on the batch; a batch that breaks its
    own rule is refused first, so the seed's is then worked out as for one image.
    """
    images = request.batch if isinstance(request.batch, int) and request.batch >= 1 else 1
    return {
        "steps": ("steps", Whole(1, MAX_STEPS)),
        "batch": ("batch", Whole(1, MAX_BATCH)),
        "strength": ("strength", Span(0.0, 1.0, low_open=True)),    # 0 would leave no step to run
        "seed": seed_rule(images),
        "guidance": ("guidance", ANY_NUMBER),
        "clip_skip": ("clip skip", Whole(1)),
        "deep_cache_interval": ("the deep cache interval (1 = off: the whole UNet every step)",
                                Whole(1, MAX_DEEP_CACHE_INTERVAL)),
        "deep_cache_blocks": ("the deep cache blocks (how many shallow UNet blocks run on the cached steps)",
                              Whole(1)),
        "deep_cache_start": ("the deep cache start (the fraction of the first steps run in full)", FRACTION),
        "guidance_cutoff": ("the guidance cut-off (the fraction of the last steps run without guidance, 0 = off)",
                            FRACTION),
        "mask_blur": ("the mask blur (px)", Whole(0, MAX_MASK_BLUR)),
        "masked_content": ("the masked content", OneOf(MASKED_CONTENT)),
        "inpaint_area": ("the inpaint area", OneOf(INPAINT_AREAS)),
        "inpaint_padding": ("the padding around the mask (px)", Whole(0, MAX_OUTPAINT)),
        "decoder": ("the decoder", OneOf(DECODERS)),
        "outpaint": ("Outpainting", Sides()),
    }


def seed_rule(images: int = 1, name: str = "seed") -> tuple[str, Whole]:
    """Image i of a run uses seed + i, so the last image's seed must still fit torch's generator."""
    if images > 1:
        name += f" (the {images} images use seed to seed + {images - 1})"
    return name, Whole(0, MAX_SEED - (images - 1))


def check_field(field: str, value, request: GenerationRequest):
    """`value` if `field` may hold it in `request`; BrokenRule, whose `reason` leaves the name out, if not."""
    name, rule = field_rules(request)[field]
    return require(name, value, rule)


def check_request(request: GenerationRequest) -> None:
    """Refuse what cannot work, with a message a user understands. (The sampler's name is checked where
    the samplers are: core/sampling/samplers.py get_sampler.)"""
    check_size(request.width, request.height)
    if request.schedule not in SCHEDULE_NAMES:
        raise LatentDeskError(f"Unknown schedule type {request.schedule!r}. Choose one of: {', '.join(SCHEDULE_NAMES)}.")
    for field, (name, rule) in field_rules(request).items():
        if field != "strength" or request.is_img2img:        # txt2img never uses the strength
            require(name, getattr(request, field), rule)
    check_loras(request.loras)


class Sides(NamedTuple):
    """Outpainting's growth: None, or (left, top, right, bottom) whole pixels 0..MAX_OUTPAINT, one above 0."""

    def wants(self) -> str:
        return f"four whole numbers of pixels from 0 to {MAX_OUTPAINT} (left, top, right, bottom), one above 0"

    def problem(self, value) -> str | None:
        if value is None:
            return None
        if not isinstance(value, tuple | list) or len(value) != 4:
            return "not four numbers"
        return next((f"{name}: {problem}" for name, side in zip(("left", "top", "right", "bottom"), value, strict=True)
                     if (problem := Whole(0, MAX_OUTPAINT).problem(side))), None) or \
            (None if any(value) else "all four are 0: nothing to grow")


def check_outpaint(sides) -> tuple[int, int, int, int]:
    """Outpainting's (left, top, right, bottom), as a tuple, if it keeps the rule; BrokenRule if not."""
    if sides is None:
        raise BrokenRule(f"Outpainting must be {Sides().wants()}, not nothing", "nothing")
    return tuple(require("Outpainting", sides, Sides()))


def check_loras(loras) -> tuple[tuple[str, float], ...]:
    """`loras` as a request holds them if usable: at most MAX_LORAS (name, weight) pairs, each weight a finite
    number within ±MAX_WEIGHT; BrokenRule naming the LoRA if not. The prompt's tags are checked with it too."""
    if not isinstance(loras, tuple | list) or any(not isinstance(e, tuple | list) or len(e) != 2 for e in loras):
        raise BrokenRule("LoRAs must be (name, weight) pairs", "not (name, weight) pairs")
    if len(loras) > MAX_LORAS:
        raise BrokenRule(f"{len(loras)} LoRAs at once is more than Latent Desk takes ({MAX_LORAS})",
                         f"more than {MAX_LORAS} LoRAs")
    for name, weight in loras:
        if not isinstance(name, str) or not name.strip():
            raise BrokenRule(f"a LoRA's name must be a file name or path, not {name!r}", "a LoRA without a name")
        require(f"the weight of LoRA {name!r}", weight, LORA_WEIGHT)
    return tuple((name, float(weight)) for name, weight in loras)
