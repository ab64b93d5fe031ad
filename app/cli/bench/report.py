"""The results as a markdown table (what docs/PERFORMANCE.md will hold) and as JSON.

    markdown(results) -> str
    write_reports(results, json_path, markdown_path)

Every number shown is a median of runs the results record; nothing is estimated or filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

SHOWN = {"seconds": "{:.3f} s", "peak_rss_mb": "{:,.0f} MiB"}   # the JSON has every other metric
REFERENCE_NAMES = {"diffusers": "diffusers", "openvino": "OpenVINO"}


def markdown(results: dict) -> str:
    machine, settings = results["machine"], results["settings"]
    gpu = f", GPU {machine['gpu']}" if "gpu" in machine else ""
    reference = REFERENCE_NAMES[settings.get("against", "diffusers")]
    if reference == "OpenVINO":
        versions, precision = f"OpenVINO {machine['openvino']}", "float32 and bfloat16 (ours), f32 and default (OpenVINO)"
        versus = ("each of ours is divided by OpenVINO at the same precision (ours float32 / OpenVINO f32, ours "
                  f"bfloat16 / OpenVINO's default, which on this CPU is {machine['openvino_default_precision']})")
    else:
        versions, precision = f"diffusers {machine['diffusers']}, transformers {machine['transformers']}", settings["dtype"]
        versus = "ours is divided by diffusers"
    lines = [
        f"# Latent Desk vs {reference}",
        "",
        f"Measured by `{settings['command']}` on {machine['cpu']} ({machine['usable_cores']} usable of "
        f"{machine['cpu_cores']} cores, {machine['torch_threads']} torch threads{gpu}), device {machine['device']}, "
        f"{precision}, torch {machine['torch']}, {versions}.",
        "",
        f"Models: {settings['models']}. Each number is the median of {settings['runs']} runs after a warm-up; "
        f"the runs alternate between the implementations, and {versus}: **ours / {reference}** is the median "
        "of the ratios taken within each round (below 1: ours is faster or smaller).",
        "",
    ]
    approximate = [case for case in results["cases"] if "psnr_db" in case.get("details", {})]
    compared = [case for case in results["cases"] if case not in approximate]
    if compared:
        lines += [f"| Case | Run | Median time | Ours / {reference} (time) | Peak RSS | Ours / {reference} (RSS) |",
                  "|---|---|---:|---:|---:|---:|"]
    notes = []
    for case in compared:
        if "skipped" in case:
            lines.append(f"| {case['title']} | — | skipped | | | |")
            notes.append(f"- {case['title']}: skipped, {case['skipped']}")
            continue
        for run in case["metrics"]["seconds"]["median"]:
            cells = [case["title"], run]
            for metric in ("seconds", "peak_rss_mb"):
                cells += _cells(case, metric, run)
            lines.append("| " + " | ".join(cells) + " |")
        difference = case["details"].get("max_relative_difference")
        if isinstance(difference, dict):   # against OpenVINO: each run against our float32 output
            notes.append(f"- {case['title']}: largest difference from our float32 output, as a fraction of its "
                         "largest value (same weights, same inputs): "
                         + ", ".join(f"{run} {value:.1e}" for run, value in difference.items()) + ".")
        elif difference is not None:
            notes.append(f"- {case['title']}: outputs of ours and diffusers differ by at most "
                         f"{case['details']['max_relative_difference']:.1e} of the largest value (same weights, "
                         "same inputs).")
    return "\n".join(lines + [""] + notes + approximate_table(approximate)) + "\n"


def approximate_table(cases: list[dict]) -> list[str]:
    """The speed-ups cases: each mode's time, speed-up (exact / mode, round by round) and PSNR vs exact."""
    if not cases:
        return []
    lines = ["", "## Approximate speed-ups", "",
             "Same request and seed in every mode; speed-up = exact time / mode time, the median of the "
             "per-round ratios; PSNR of the decoded 8-bit image against the exact one; deep calls = UNet "
             "calls that ran the middle block, of all calls (rows: the batch rows they processed).", "",
             "| Case | Mode | Median time | Speed-up | PSNR vs exact | Deep calls / calls (rows) |",
             "|---|---|---:|---:|---:|---:|"]
    for case in cases:
        seconds, details = case["metrics"]["seconds"], case["details"]
        for mode, median in seconds["median"].items():
            ratio = seconds["median_ratio"].get(mode)
            speedup = f"{1 / ratio:.2f}×" if ratio else "1 (baseline)"
            psnr = details["psnr_db"].get(mode)
            calls = details["unet_calls"][mode]
            lines.append(f"| {case['title']} | {mode} | {median:.3f} s | {speedup} | "
                         f"{f'{psnr:.1f} dB' if psnr is not None else '—'} | "
                         f"{calls['deep']} / {calls['calls']} ({calls['rows']}) |")
    settings = cases[0]["details"]["settings"]["both"]
    lines += ["", f"Settings (the defaults of `--deep-cache` and `--guidance-cutoff`): deep cache runs the first "
              f"{settings['deep_cache_start']:.0%} of the steps in full, then the whole UNet on one step in "
              f"{settings['deep_cache_interval']} and {settings['deep_cache_blocks']} shallow block(s) on the "
              f"others; the guidance cut-off runs the last {settings['guidance_cutoff']:.0%} of the steps unguided."]
    return lines


def _cells(case: dict, metric: str, run: str) -> list[str]:
    numbers = case["metrics"].get(metric)
    if numbers is None:
        return ["", ""]
    shown = SHOWN[metric].format(numbers["median"][run])
    ratio = numbers["median_ratio"].get(run)
    return [shown, f"{ratio:.2f}" if ratio is not None else ""]


def write_reports(results: dict, json_path: str | Path | None, markdown_path: str | Path | None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if markdown_path:
        Path(markdown_path).write_text(markdown(results), encoding="utf-8")
