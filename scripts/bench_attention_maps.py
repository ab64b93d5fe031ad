"""Issue 25's acceptance benchmark: do attention maps point at the right place, and what do they cost?

    python scripts/bench_attention_maps.py quality [--cases 100] [--model M]   # a. a shapes model's maps vs the checker
    python scripts/bench_attention_maps.py cost [--runs 7] [--only builtin]   # b. time off / on / before the feature
    python scripts/bench_attention_maps.py memory [--runs 3]         # b. peak memory of one 512 px run, off / on
    python scripts/bench_attention_maps.py summary                   # a.'s summary again from its stored images

Each part merges its figures into docs/performance/attention_maps.json (--json to write elsewhere).

a. Built-in model at its family's defaults, the first `cases` held-out captions naming a shape and a colour
   (core.shapes.evaluate.heldout_cases), seed 1234 + i. The shape word's map at image size (grey_image),
   thresholded at its "top 25 %", against the checker's object mask (core.shapes.checker.object_mask):
   IoU >= 0.5 under both readings: values >= 75 % of the map's peak, and the top quartile of the pixels.
   The background colour word's map "peaks outside the object" when most of its peak pixels (255) lie
   outside the mask. Per true size and per step range: one run per caption sums every step, and the probe's
   running sum is copied at the half-way step boundary (HalfwayProbe): first half = that copy, second
   half = all - copy (the sums are linear; checked against runs over each half on the first case). The same
   run also sums each level of the UNet (its cross-attention layers of one grid size) apart: "level_8x8".
b. Time of generate() (text encoding to decoded image) with maps off, on, and "before" (Attention.forward
   without the probe's None check, as before issue 25: what "none when off" compares with), alternating
   in rotating order (app/cli/bench/timing.py), on the built-in model at its defaults and on an SD1.5-shaped
   UNet with random weights at 512 px, 1 step. Memory: a child process per run loads the SD1.5-shaped model,
   resets its peak RSS (/proc/self/clear_refs "5") and reads VmHWM after one 512 px generate; the model's
   load is therefore not in the peak, which would otherwise hide the run's own memory (loading peaks higher).
   The child runs with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): by default it grows
   after the first large frees, and later large tensors then come from the heap, where freed memory is not
   given back (a first try without it peaked at 1103 MiB with maps off and 946 MiB with them on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.generate  # noqa: E402
from core.attention_maps import AttentionSettings, WordMap, grey_image, word_maps  # noqa: E402
from core.generate import generate  # noqa: E402
from core.loading.checkpoint import load_model  # noqa: E402
from core.request import GenerationRequest  # noqa: E402
from core.resources import builtin_model_path  # noqa: E402
from core.sampling.attention_probe import CrossAttentionProbe  # noqa: E402
from core.text.prompt_words import prompt_words  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "performance" / "attention_maps.json"
SEED = 1234
SD15_PROMPT = "a photograph of an astronaut riding a horse on the moon"


def defaults_request(model, prompt: str, seed: int) -> GenerationRequest:
    family = model.family
    return GenerationRequest(prompt=prompt, steps=family.default_steps, guidance=family.default_guidance,
                             sampler=family.default_sampler, width=family.default_size, height=family.default_size,
                             seed=seed)


# -- a. quality -----------------------------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def readings(word: WordMap, size: tuple[int, int], mask: np.ndarray) -> dict:
    """The word's map against the object mask: IoU under both readings of "top 25 %", and where it peaks."""
    grey = np.asarray(grey_image(word, size))
    peak = grey == grey.max()
    return {"iou_peak75": iou(grey >= 0.75 * grey.max(), mask),
            "iou_quartile": iou(grey >= np.quantile(grey, 0.75), mask),     # ties at the threshold included
            "peak_outside": bool((peak & ~mask).sum() > (peak & mask).sum())}


class HalfwayProbe(CrossAttentionProbe):
    """The engine's probe, which also keeps a copy of the prompt's sums as they stand after step `halfway - 1`,
    and what each level of the UNet (its layers' grid, e.g. 8x8) added: how much a coarse level blurs the map."""

    halfway = 0

    def __call__(self, q, k) -> None:
        before = None if self.cond is None else self.cond.clone()
        super().__call__(q, k)
        h, w = self._grid(q.shape[2])
        added = self.cond - before if before is not None else self.cond.clone()
        self.levels = getattr(self, "levels", {})
        self.levels[f"level_{h}x{w}"] = added + self.levels.get(f"level_{h}x{w}", 0)

    def end_step(self) -> None:
        super().end_step()
        if self.step == self.halfway:
            self.first_half = self.cond.clone()


def halves_of_one_run(model, request: GenerationRequest, halfway: int):
    """(image, {step range: word maps}) from one run: all steps, the first `halfway`, and the rest."""
    made = []

    def probe(*args, **kwargs):
        made.append(HalfwayProbe(*args, **kwargs))
        return made[-1]

    HalfwayProbe.halfway = halfway
    original, core.generate.CrossAttentionProbe = core.generate.CrossAttentionProbe, probe
    try:
        result = generate(request, model, attention=AttentionSettings())
    finally:
        core.generate.CrossAttentionProbe = original
    every, first = made[0].cond[0], made[0].first_half[0]
    words = prompt_words(model.text_encoder.tokenizer, request.prompt, model.text_encoder.added_words)
    maps = {"all": word_maps(every, words), "first_half": word_maps(first, words),
            "second_half": word_maps(every - first, words)}
    maps |= {level: word_maps(sums[0], words) for level, sums in sorted(made[0].levels.items())}
    return result.images[0], {name: {m.word: m for m in found} for name, found in maps.items()}


def quality(cases_wanted: int, model_path: Path | None = None) -> dict:
    from core.shapes.checker import measure, object_mask
    from core.shapes.evaluate import heldout_cases

    model = load_model(model_path or builtin_model_path())
    cases = [c for c in heldout_cases(4 * cases_wanted) if {"shape", "color"} <= c.mentioned][:cases_wanted]
    steps = model.family.default_steps
    records = []
    for i, case in enumerate(cases):
        request = defaults_request(model, case.caption, SEED + i)
        image, maps = halves_of_one_run(model, request, steps // 2)
        if i == 0:
            check_halves(model, request, maps, steps // 2)
        mask = object_mask(image)
        record = {"caption": case.caption, "size": case.scene.size, "object_px": int(mask.sum()),
                  "shape_drawn": measure(image).shape == case.scene.shape, "shape": {}, "background": {}}
        for role, word in (("shape", case.scene.shape),
                           ("background", case.scene.background if "background" in case.mentioned else None)):
            if word is None:
                continue
            if word not in maps["all"]:
                raise RuntimeError(f"case {i}: no map for {word!r} in {case.caption!r}")
            for step_range, found in maps.items():
                record[role][step_range] = readings(found[word], image.size, mask)
        records.append(record)
        print(f"{i + 1}/{len(cases)} {case.caption!r}: {record['shape']['all']}", flush=True)
    return {"model": str(model_path or "builtin"), "cases": len(cases), "steps": steps, "sampler": model.family.default_sampler,
            "guidance": model.family.default_guidance, "size": model.family.default_size, "seed": SEED,
            "summary": summarise(records, model.family.default_size ** 2), "images": records}


def check_halves(model, request: GenerationRequest, maps: dict, halfway: int) -> None:
    """The halves taken from one run equal runs that sum only those steps: the summary rests on it."""
    for name, steps in (("first_half", range(halfway)), ("second_half", range(halfway, request.steps))):
        run = generate(request, model, attention=AttentionSettings(steps)).attention[0]
        for word in run.prompt:
            ours = maps[name][word.word].map
            if not torch.allclose(ours, word.map, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{name} of {word.word!r} differs from a run over those steps by "
                                   f"{float((ours - word.map).abs().max())}")


def share(records: list[dict], role: str, step_range: str, test) -> dict:
    values = [test(r[role][step_range]) for r in records if step_range in r[role]]
    return {"share": sum(values) / len(values) if values else None, "of": len(values)}


def summarise(records: list[dict], pixels: int) -> dict:
    def block(subset: list[dict]) -> dict:
        out = {}
        for step_range in dict.fromkeys(name for r in subset for name in r["shape"]):   # steps, then levels
            out[step_range] = {
                "shape_iou_peak75_ge_0.5": share(subset, "shape", step_range, lambda r: r["iou_peak75"] >= 0.5),
                "shape_iou_quartile_ge_0.5": share(subset, "shape", step_range, lambda r: r["iou_quartile"] >= 0.5),
                "shape_mean_iou_peak75": mean(subset, "shape", step_range, "iou_peak75"),
                "shape_mean_iou_quartile": mean(subset, "shape", step_range, "iou_quartile"),
                "shape_peak_inside_object": share(subset, "shape", step_range, lambda r: not r["peak_outside"]),
                "background_peak_outside_object": share(subset, "background", step_range,
                                                        lambda r: r["peak_outside"])}
        return out

    sizes = {size: block([r for r in records if r["size"] == size]) for size in ("small", "medium", "large")}
    # A region of a quarter of the pixels overlaps an object of A pixels at best min(A, Q) / max(A, Q):
    # under the quartile reading an object below Q / 2 or above 2 Q pixels can never reach IoU 0.5.
    quarter = pixels / 4
    reachable = [r for r in records if min(r["object_px"], quarter) / max(r["object_px"], quarter, 1) >= 0.5]
    return {"overall": block(records), "by_size": sizes,
            "quartile_reading_can_reach_0.5": {"images": len(reachable),
                                               "of_them_reached": share(reachable, "shape", "all",
                                                                       lambda r: r["iou_quartile"] >= 0.5)},
            "shape_drawn_right": block([r for r in records if r["shape_drawn"]]),
            "images_per_size": {s: sum(r["size"] == s for r in records) for s in sizes},
            "no_object_found": sum(r["object_px"] == 0 for r in records)}


def mean(records: list[dict], role: str, step_range: str, key: str) -> float | None:
    values = [r[role][step_range][key] for r in records if step_range in r[role]]
    return statistics.fmean(values) if values else None


# -- b. cost --------------------------------------------------------------------------------------------

def forward_before_issue_25(self, x, context):
    """core.nets.unet.Attention.forward as it was before issue 25 (no probe check): the "before" arm."""
    q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
    k = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
    v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return self.to_out[0](out.transpose(1, 2).flatten(2))


def contenders(model, request: GenerationRequest, before: bool) -> dict:
    from app.cli.bench.timing import timed
    from core.nets.unet import Attention

    def run_before():
        current = Attention.forward
        Attention.forward = forward_before_issue_25
        try:
            generate(request, model)
        finally:
            Attention.forward = current

    runs = {"off": timed(lambda: generate(request, model), "cpu"),
            "on": timed(lambda: generate(request, model, attention=AttentionSettings()), "cpu")}
    if before:
        runs["before"] = timed(run_before, "cpu")
    return runs


def cost(runs: int, only: str | None = None) -> dict:
    """Both cases; --only builtin: that case alone, kept beside the others as builtin_RUNS_rounds."""
    from app.cli.bench.random_sd15 import write_full_size_sd15
    from app.cli.bench.timing import Case, run_case

    results = {}
    builtin = load_model(builtin_model_path())
    request = defaults_request(builtin, "a large red circle in the top left corner on a blue background", SEED)
    case = Case("builtin", "built-in model at its defaults", contenders(builtin, request, before=True), "off",
                {"steps": request.steps, "size": request.width, "sampler": request.sampler})
    results["builtin" if only is None else f"builtin_{runs}_rounds"] = run_case(case, runs, print).as_dict()
    del builtin
    if only == "builtin":
        return results
    with tempfile.TemporaryDirectory(prefix="bench-attention-") as folder:
        sd15 = load_model(write_full_size_sd15(Path(folder) / "sd15-random.safetensors"))
    request = GenerationRequest(prompt=SD15_PROMPT, steps=1, guidance=7.5, sampler="Euler", width=512, height=512,
                                seed=SEED)
    case = Case("sd15_512", "SD1.5-shaped UNet, random weights, 512 px, 1 step, guided",
                contenders(sd15, request, before=False), "off", {"steps": 1, "size": 512, "guidance": 7.5})
    results["sd15_512"] = run_case(case, max(runs // 2, 5), print).as_dict()
    return results


def memory(runs: int) -> dict:
    from app.cli.bench.random_sd15 import write_full_size_sd15

    peaks: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="bench-attention-") as folder:
        path = write_full_size_sd15(Path(folder) / "sd15-random.safetensors")
        for _ in range(runs):
            for maps in ("off", "on"):
                child = subprocess.run([sys.executable, __file__, "child-memory", str(path), maps],
                                       capture_output=True, text=True, check=True,
                                       env=os.environ | {"MALLOC_MMAP_THRESHOLD_": str(2**20)})
                peaks[maps].append(json.loads(child.stdout.strip().splitlines()[-1])["run_peak_mib"])
                print(maps, peaks[maps][-1], flush=True)
    medians = {maps: statistics.median(values) for maps, values in peaks.items()}
    return {"what": "peak RSS of one 512 px, 1-step, guided generate of the SD1.5-shaped model, above the RSS "
                    "before it (child process per run, peak reset after the load, mmap threshold 1 MiB)",
            "run_peak_mib": peaks, "median_mib": medians, "extra_mib": medians["on"] - medians["off"],
            "probe_sums_mib": 2 * 77 * 64 * 64 * 4 / 2**20}


def child_memory(path: str, maps: str) -> None:
    torch.set_num_threads(1)        # the same work in the same order every run
    model = load_model(path)
    request = GenerationRequest(prompt=SD15_PROMPT, steps=1, guidance=7.5, sampler="Euler", width=512, height=512,
                                seed=SEED)
    before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")    # the peak so far (the load's) forgotten
    generate(request, model, attention=AttentionSettings() if maps == "on" else None)
    print(json.dumps({"run_peak_mib": status_mib("VmHWM") - before}))


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# -- the report -----------------------------------------------------------------------------------------

def merge(path: Path, part: str, figures: dict) -> None:
    from app.cli.bench.machine import machine_info

    report = json.loads(path.read_text()) if path.is_file() else {}
    report[part] = figures
    report.setdefault("machine", machine_info("cpu"))
    figures["torch_threads"] = torch.get_num_threads()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {part} into {path}")


def main(argv: Collection[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("quality", "cost", "memory", "summary", "child-memory"))
    parser.add_argument("args", nargs="*", help="child-memory: MODEL on|off")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--only", choices=("builtin",), help="cost: the built-in model's case alone")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--model", type=Path, help="quality: another shapes model than the built-in one")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "child-memory":
        child_memory(*args.args)
        return 0
    if args.part == "summary":
        report = json.loads(args.json.read_text())
        report["quality"]["summary"] = summarise(report["quality"]["images"], report["quality"]["size"] ** 2)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    figures = {"quality": lambda: quality(args.cases, args.model), "cost": lambda: cost(args.runs or 7, args.only),
               "memory": lambda: memory(args.runs or 3)}[args.part]()
    if args.only:      # one case again: beside the earlier figures, not instead of them
        figures = json.loads(args.json.read_text()).get("cost", {}) | figures
    merge(args.json, args.part, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
