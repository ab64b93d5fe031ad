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

from core.errors import LatentDeskError
from core.limits import ANY_NUMBER, FRACTION, Span, Whole, check_size, require
from core.sampling.sampler_names import AUTOMATIC, SCHEDULE_NAMES
from core.sampling.speedups import DEEP_CACHE_BLOCKS, DEEP_CACHE_START, MAX_DEEP_CACHE_INTERVAL

MAX_SEED = 2**64 - 1       # torch.Generator.manual_seed's range; A1111's UI stays below 2**32
MAX_BATCH = 64
# Far past any sampler's gain (A1111's slider stops at 150); it keeps a typo such as --steps 2000000 from
# running for days, or from allocating its schedule at all.
MAX_STEPS = 10_000


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

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None


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
