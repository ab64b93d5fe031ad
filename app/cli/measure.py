"""`latentdesk eval shapes` and `latentdesk bench`: how good and how fast a model is, measured.

    latentdesk eval shapes [--model builtin|PATH] [--guidance G ...] [--steps N] [--sampler NAME] [--n N]
                           [--seed S] [--json FILE] [--images DIR]
    latentdesk bench [--model builtin|PATH] [--runs N] [--size PX] [--steps N] [--guidance G] [--sampler NAME]
    latentdesk bench compare [--quick] [--runs N] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                             [--steps N] [--only unet vae txt2img load builtin approx approx-builtin]
                             [--against diffusers|openvino] [--json FILE] [--markdown FILE]

`eval shapes` draws one image per held-out caption (templates never used in training) and reads
each back with the analytic checker (core/shapes/checker.py); it first scores the captions' own
renders, which must come out at 100 %. `bench` times whole txt2img runs (prompt encoding,
every guided step, VAE decode) after one warm-up run and reports the median. `bench compare` measures
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


def add_measure_commands(commands) -> None:
    ev = commands.add_parser("eval", help="measure a model against the captioned-shapes world")
    kinds = ev.add_subparsers(dest="eval_kind", required=True)
    shapes = kinds.add_parser("shapes", help="accuracy on held-out shapes captions, read back by the checker")
    shapes.add_argument("--model", default="builtin")
    shapes.add_argument("--guidance", type=float, nargs="+", help="one or more scales (default: the model's)")
    shapes.add_argument("--steps", type=int, help="default: the model's")
    shapes.add_argument("--sampler", help="default: the model's")
    shapes.add_argument("--n", type=int, default=200, help="held-out captions (default 200)")
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
    cells = "".join(f"{100 * tally.accuracy(key):>12.1f}" for key, _ in COLUMNS)
    return f"{label:<22}{cells}{100 * tally.all_named:>12.1f}"


def run_eval_shapes(args) -> int:
    from core.errors import LatentDeskError
    from core.shapes.evaluate import EvalSettings, evaluate, ground_truth, heldout_cases

    if args.n < 1:
        raise LatentDeskError(f"--n must be at least 1, not {args.n}")
    model = _load(args.model, args.device)
    family = model.family
    scales = args.guidance or [family.default_guidance]
    steps = args.steps or family.default_steps
    sampler = args.sampler or family.default_sampler
    cases = heldout_cases(args.n, args.seed)
    images_dir = Path(args.images) if args.images else None
    if images_dir:
        images_dir.mkdir(parents=True, exist_ok=True)

    print(f"{model.name}: {args.n} held-out captions (templates never trained on), {steps} steps, {sampler}, "
          f"image seeds {args.seed}..{args.seed + args.n - 1}")
    print(f"{'accuracy %':<22}" + "".join(f"{title:>12}" for _, title in COLUMNS) + f"{'all named':>12}")
    truth = ground_truth(cases)
    print(_row("rendered ground truth", truth), flush=True)
    results = {"model": str(model.source), "n": args.n, "seed": args.seed, "steps": steps, "sampler": sampler,
               "ground_truth": truth.as_dict(), "guidance": {}}
    for scale in scales:
        started = time.perf_counter()

        def on_image(i, case, image, scale=scale):
            print(f"\rguidance {scale:g}: image {i + 1}/{args.n}", end="", file=sys.stderr, flush=True)
            if images_dir:
                safe = "".join(c if c.isalnum() else "_" for c in case.caption)[:60]
                image.save(images_dir / f"g{scale:g}_{i:04d}_{safe}.png")

        tally = evaluate(model, cases, EvalSettings(scale, steps, sampler, args.seed, family.default_size), on_image)
        seconds = time.perf_counter() - started
        print("\r", end="", file=sys.stderr)
        print(_row(f"guidance {scale:g}", tally), flush=True)
        results["guidance"][f"{scale:g}"] = {**tally.as_dict(), "seconds": round(seconds, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


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
