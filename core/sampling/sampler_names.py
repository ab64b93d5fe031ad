"""The samplers' and schedule types' names (A1111's spelling), without the samplers: what the window's menus,
the command line and the PNG metadata parser need, importable before torch is (core/sampling/samplers.py holds
the samplers themselves, core/sampling/schedule_types.py the schedule types)."""

from __future__ import annotations

from collections.abc import Collection

SAMPLER_NAMES: tuple[str, ...] = (
    "Euler", "Euler a", "Heun", "LMS", "DDIM", "DDPM", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras",
    "UniPC", "LCM",
)

AUTOMATIC = "Automatic"  # the sampler's own sigmas, what a request without a schedule type has always had
# A1111 >= 1.9's "Schedule type" menu (modules/sd_schedulers.py labels), the ones Latent Desk has.
SCHEDULE_NAMES: tuple[str, ...] = (
    AUTOMATIC, "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "Normal", "DDIM", "Beta",
    "Align Your Steps",
)
# Schedules that A1111 (before 1.9) folded into the sampler name, e.g. "DPM++ 2M Karras".
NAMED_SCHEDULES = ("Karras", "Exponential")


def split_sampler(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"), as A1111 1.9+ writes it; other names stay whole."""
    for schedule in NAMED_SCHEDULES:
        if name.endswith(" " + schedule):
            return name.removesuffix(" " + schedule), schedule
    return name, None


def resolve_schedule(sampler: str, schedule: str, known: Collection[str] = SAMPLER_NAMES) -> tuple[str, str]:
    """The (sampler, schedule type) a request means, in one spelling, so equal meanings are equal pairs.

    "Automatic" keeps the sampler as named, "DPM++ 2M Karras" included (its own Karras sigmas). A schedule
    that a sampler has in its name becomes that sampler: ("DPM++ 2M", "Karras") is "DPM++ 2M Karras". Any
    other schedule replaces the one in the name: ("DPM++ 2M Karras", "Beta") is ("DPM++ 2M", "Beta"); a
    sampler that exists only with its schedule in the name keeps it ("DPM++ 2M SDE Karras", "Beta").
    """
    if schedule == AUTOMATIC:
        return sampler, schedule
    base, _ = split_sampler(sampler)
    if f"{base} {schedule}" in known:
        return f"{base} {schedule}", AUTOMATIC
    return (base if base in known else sampler), schedule
