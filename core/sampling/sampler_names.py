"""The samplers' names (A1111's spelling), without the samplers: what the window's menu and the PNG
metadata parser need, importable before torch is (core/sampling/samplers.py holds the samplers themselves)."""

SAMPLER_NAMES: tuple[str, ...] = (
    "Euler", "Euler a", "Heun", "LMS", "DDIM", "DDPM", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras",
    "UniPC", "LCM",
)
