"""The results as a markdown table (what docs/PERFORMANCE.md will hold) and as JSON.

    markdown(results) -> str
    write_reports(results, json_path, markdown_path)

Every number shown is a median of runs the results record; nothing is estimated or filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

SHOWN = {"seconds": "{:.3f} s", "peak_rss_mb": "{:,.0f} MiB"}   # the JSON has every other metric


def markdown(results: dict) -> str:
    machine, settings = results["machine"], results["settings"]
    gpu = f", GPU {machine['gpu']}" if "gpu" in machine else ""
    lines = [
        "# Latent Desk vs diffusers",
        "",
        f"Measured by `{settings['command']}` on {machine['cpu']} ({machine['usable_cores']} usable of "
        f"{machine['cpu_cores']} cores, {machine['torch_threads']} torch threads{gpu}), device {machine['device']}, "
        f"{settings['dtype']}, torch {machine['torch']}, diffusers {machine['diffusers']}, "
        f"transformers {machine['transformers']}.",
        "",
        f"Models: {settings['models']}. Each number is the median of {settings['runs']} runs after a warm-up; "
        "the runs alternate between the implementations, and **ours / diffusers** is the median of the "
        "ratios taken within each round (below 1: ours is faster or smaller).",
        "",
        "| Case | Run | Median time | Ours / diffusers (time) | Peak RSS | Ours / diffusers (RSS) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for case in results["cases"]:
        if "skipped" in case:
            lines.append(f"| {case['title']} | — | skipped | | | |")
            notes.append(f"- {case['title']}: skipped, {case['skipped']}")
            continue
        for run in case["metrics"]["seconds"]["median"]:
            cells = [case["title"], run]
            for metric in ("seconds", "peak_rss_mb"):
                cells += _cells(case, metric, run)
            lines.append("| " + " | ".join(cells) + " |")
        if "max_relative_difference" in case["details"]:
            notes.append(f"- {case['title']}: outputs of ours and diffusers differ by at most "
                         f"{case['details']['max_relative_difference']:.1e} of the largest value (same weights, "
                         "same inputs).")
    return "\n".join(lines + [""] + notes) + "\n"


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
