"""`latentdesk eval shapes` and `latentdesk bench`: how good and how fast a model is, measured.

    latentdesk eval shapes [--model builtin|PATH] [--guidance G ...] [--steps N] [--sampler NAME] [--n N]
                           [--captions templates|structures ...] [--seed S] [--json FILE] [--images DIR]
    latentdesk bench [--model builtin|PATH] [--runs N] [--size PX] [--steps N] [--guidance G] [--sampler NAME]
    latentdesk bench compare [--quick] [--runs N] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                             [--steps N] [--only unet vae txt2img load builtin approx approx-builtin]
                             [--against diffusers|openvino] [--json FILE] [--markdown FILE]

`eval shapes` draws one image per held-out caption (templates never used in training; with
`--captions structures`, the caption grammar's held-out structures, core/shapes/grammar.py) and reads
each back with the analytic checker (core/shapes/checker.py); it first scores the captions' own
renders, which must come out at 100 %. Below each guidance row come the same figures per true object
size (small / medium / large; medium has no size word) and, for structures, per held-out rule; with
both sets the JSON holds {"sets": {"structures": ..., "templates": ...}}. `bench` times whole txt2img
runs (prompt encoding, every guided step, VAE decode) after one warm-up run and reports the median. `bench compare` measures
ours against diffusers (which it needs installed) on one machine, with the same random weights in
both: a UNet step and a VAE decode at 512x512, txt2img end to end (ours with previews off and on),
checkpoint load time and peak memory of a ~2 GB fp16 single file (each load in a fresh process), and
the built-in model (ours only), and the approximate speed-ups (core/sampling/speedups.py) against the exact image
on the SD1.5-shaped model at 256x256 and on the built-in model: speed-up and PSNR. Each case is the median of --runs rounds (at least 3) after a warm-up,
the order alternating between the two sides, with ours / diffusers taken round by round. `--quick`
runs the same cases on tiny models at 64x64 in seconds. See app/cli/bench/.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.shapes.evaluate import EVAL_SEED

COLUMNS = (("color", "colour"), ("background", "background"), ("shape", "shape"), ("position", "position"),
           ("size", "size"))
# --captions: (what the cases are, how many by default)
CAPTION_SETS = {"templates": ("held-out captions (templates never trained on)", 200),
                "structures": ("held-out structures (caption grammar, never trained on)", 300)}


def add_measure_commands(commands) -> None:
    ev = commands.add_parser("eval", help="measure a model against the captioned-shapes world")
    kinds = ev.add_subparsers(dest="eval_kind", required=True)
    shapes = kinds.add_parser("shapes", help="accuracy on held-out shapes captions, read back by the checker")
    shapes.add_argument("--model", default="builtin")
    shapes.add_argument("--guidance", type=float, nargs="+", help="one or more scales (default: the model's)")
    shapes.add_argument("--steps", type=int, help="default: the model's")
    shapes.add_argument("--sampler", help="default: the model's")
    shapes.add_argument("--n", type=int, help="held-out captions per set (default 200 templates, 300 structures)")
    shapes.add_argument("--captions", nargs="+", choices=tuple(CAPTION_SETS), default=["templates"],
                        help="templates: the 10 held-out templates (default); structures: the caption grammar's "
                             "held-out structures; both: one after the other, one JSON")
    shapes.add_argument("--seed", type=int, default=EVAL_SEED, help="scenes and image seeds (image i: seed + i)")
    shapes.add_argument("--json", help="also write the results to this JSON file")
    shapes.add_argument("--images", help="save each generated image here, named by index and caption")
    shapes.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    shapes.set_defaults(handler=run_eval_shapes)

    bench = commands.add_parser("bench", help="time txt2img end to end (median of several runs)")
    bench.add_argument("--model", default="builtin")
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--size", type=int, help="width and height in px (default: the model's)")
    bench.add_argument("--steps", type=int, help="default: the model's")
    bench.add_argument("--guidance", type=float, help="default: the model's (1 = unguided, one UNet call a step)")
    bench.add_argument("--sampler", help="default: the model's")
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    bench.add_argument("--prompt", default="a large red star in the top left corner on a blue background")
    bench.set_defaults(handler=run_bench)

    kinds = bench.add_subparsers(dest="bench_kind", metavar="compare", help="(optional) compare with diffusers")
    compare = kinds.add_parser("compare", help="ours vs diffusers: same machine, config and weights, one run",
                               description="Ours against diffusers on this machine: UNet step, VAE decode, txt2img "
                                           "end to end, checkpoint load time and peak RSS, the built-in model; "
                                           "and our approximate speed-ups against our exact image. "
                                           "Medians of --runs rounds after a warm-up; ratio = ours / diffusers "
                                           "per round. Needs diffusers installed.")
    compare.add_argument("--quick", action="store_true", help="tiny models at 64x64: seconds instead of minutes")
    compare.add_argument("--runs", type=int, default=3, help="timed rounds per case after a warm-up (>= 3, default 3)")
    compare.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    compare.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                         help="compute dtype of both sides (default float32)")
    compare.add_argument("--steps", type=int, help="txt2img steps (default 10; 3 with --quick), and the "
                                                   "speed-ups case's on the random-weight model (default 20)")
    compare.add_argument("--only", nargs="+", metavar="CASE",
                         help="some of: unet vae txt2img load builtin approx approx-builtin")
    compare.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    compare.add_argument("--against", default="diffusers", choices=("diffusers", "openvino"),
                         help="the reference (default diffusers); openvino: the unet and vae cases, ours at float32 "
                              "and bfloat16 against OpenVINO at f32 and at its default precision (needs openvino)")
    compare.add_argument("--json", help="write every raw timing, median, ratio and the machine to this file")
    compare.add_argument("--markdown", help="write the results table to this file")
    compare.set_defaults(handler=run_bench_compare)


def _load(name: str, device: str = "cpu"):
    from core.loading.checkpoint import load_model
    from core.resources import resolve_model
    return load_model(resolve_model(name), device=device)


def _row(label: str, tally) -> str:
    def cell(x: float) -> str:
        return f"{'-':>12}" if x != x else f"{100 * x:>12.1f}"   # nan: nothing named in this group

    return f"{label:<22}" + "".join(cell(tally.accuracy(key)) for key, _ in COLUMNS) + cell(tally.all_named)


def _cases(name: str, n: int, seed: int):
    from core.shapes.evaluate import heldout_cases, heldout_structure_cases
    return (heldout_structure_cases if name == "structures" else heldout_cases)(n, seed)


def run_eval_shapes(args) -> int:
    from core.errors import LatentDeskError

    if args.n is not None and args.n < 1:
        raise LatentDeskError(f"--n must be at least 1, not {args.n}")
    model = _load(args.model, args.device)
    family = model.family
    scales = args.guidance or [family.default_guidance]
    steps = args.steps or family.default_steps
    sampler = args.sampler or family.default_sampler
    names = list(dict.fromkeys(args.captions))
    sets = {}
    for name in names:
        images_dir = Path(args.images) / name if args.images and len(names) > 1 else args.images
        sets[name] = _eval_caption_set(model, name, args.n or CAPTION_SETS[name][1], args.seed, scales, steps,
                                       sampler, images_dir)
        if args.json:   # after each set: a long run stopped half-way keeps the sets it finished
            results = sets[names[0]] if len(names) == 1 else {
                "model": str(model.source), "seed": args.seed, "steps": steps, "sampler": sampler, "sets": sets}
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _eval_caption_set(model, name: str, n: int, seed: int, scales, steps: int, sampler: str,
                      images_dir: str | Path | None) -> dict:
    """Print and return one caption set's table: ground truth, then each guidance scale and its groups."""
    from core.shapes.evaluate import EvalSettings, evaluate, ground_truth

    cases = _cases(name, n, seed)
    if images_dir:
        images_dir = Path(images_dir)
        images_dir.mkdir(parents=True, exist_ok=True)
    print(f"{model.name}: {n} {CAPTION_SETS[name][0]}, {steps} steps, {sampler}, image seeds {seed}..{seed + n - 1}")
    print(f"{'accuracy %':<22}" + "".join(f"{title:>12}" for _, title in COLUMNS) + f"{'all named':>12}")
    truth = ground_truth(cases)
    print(_row("rendered ground truth", truth), flush=True)
    results = {"model": str(model.source), "captions": name, "n": n, "seed": seed, "steps": steps,
               "sampler": sampler, "ground_truth": truth.as_dict(), "guidance": {}}
    for scale in scales:
        started = time.perf_counter()

        def on_image(i, case, image, scale=scale):
            print(f"\rguidance {scale:g}: image {i + 1}/{n}", end="", file=sys.stderr, flush=True)
            if images_dir:
                safe = "".join(c if c.isalnum() else "_" for c in case.caption)[:60]
                image.save(images_dir / f"g{scale:g}_{i:04d}_{safe}.png")

        tally = evaluate(model, cases, EvalSettings(scale, steps, sampler, seed, model.family.default_size),
                         on_image)
        seconds = time.perf_counter() - started
        print("\r", end="", file=sys.stderr)
        print(_row(f"guidance {scale:g}", tally), flush=True)
        for kind in tally.groups:
            for value, group in tally.grouped(kind):
                print(_row(f"  {value} ({group.images})", group))
        results["guidance"][f"{scale:g}"] = {**tally.as_dict(), "seconds": round(seconds, 1)}
    return results


def run_bench(args) -> int:
    import torch

    from core.errors import LatentDeskError
    from core.generate import generate
    from core.request import GenerationRequest

    if args.runs < 1:
        raise LatentDeskError(f"--runs must be at least 1, not {args.runs}")
    model = _load(args.model, args.device)
    family = model.family
    size = args.size or family.default_size
    request = GenerationRequest(prompt=args.prompt, steps=args.steps or family.default_steps,
                                guidance=family.default_guidance if args.guidance is None else args.guidance,
                                sampler=args.sampler or family.default_sampler, width=size, height=size)
    print(f"{model.name}: {size}x{size}, {request.steps} steps, {request.sampler}, guidance {request.guidance:g}, "
          f"VAE decode included; {torch.get_num_threads()} threads on {model.device}")
    generate(request, model)  # warm-up: first-call allocations and kernel choices
    times = []
    for run in range(args.runs):
        started = time.perf_counter()
        generate(replace(request, seed=run), model)
        times.append(time.perf_counter() - started)
        print(f"  run {run + 1}: {times[-1]:.3f} s", flush=True)
    print(f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}) over {args.runs} runs")
    return 0


def run_bench_compare(args) -> int:
    from app.cli.bench.compare import CASES, CompareOptions, run_comparison
    from app.cli.bench.report import markdown, write_reports

    options = CompareOptions(quick=args.quick, runs=args.runs, device=args.device, dtype=args.dtype,
                             only=tuple(args.only or CASES), steps=args.steps, seed=args.seed,
                             against=args.against)
    results = run_comparison(options, report=lambda line: print(line, file=sys.stderr, flush=True))
    write_reports(results, args.json, args.markdown)
    print(markdown(results), end="")
    return 0
