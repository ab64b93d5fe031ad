"""`latentdesk bench compare`: ours against diffusers, same machine, same config, same weights, same run.

    run_comparison(CompareOptions(...), report=print) -> results (the JSON's contents)

With `against="openvino"` the UNet step and the VAE decode are timed against OpenVINO instead, on the same
weights, ours at float32 and bfloat16 against OpenVINO at f32 and at its default (app/cli/bench/openvino_ref.py).

1. Build one set of random weights in diffusers' modules and convert it into ours (app/cli/bench/pair.py).
2. Per case: build both sides' work (app/cli/bench/cases.py, app/cli/bench/checkpoint_load.py), warm up,
   then time `runs` rounds in rotating order (app/cli/bench/timing.py).
3. Record the machine (app/cli/bench/machine.py); the caller writes JSON and markdown (app/cli/bench/report.py).
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from app.cli.bench.approximate import approx_builtin_case, approx_pair_case
from app.cli.bench.cases import builtin_case, txt2img_case, unet_step_case, vae_decode_case
from app.cli.bench.checkpoint_load import load_case
from app.cli.bench.machine import machine_info
from app.cli.bench.openvino_ref import (
    default_precision,
    openvino_unet_case,
    openvino_vae_case,
    require_openvino,
)
from app.cli.bench.pair import build_pair
from app.cli.bench.reference import require_diffusers
from app.cli.bench.specs import SD15, TINY
from app.cli.bench.timing import run_case
from core.errors import LatentDeskError

CASES = ("unet", "vae", "txt2img", "load", "builtin", "approx", "approx-builtin")
PAIRED = ("unet", "vae", "txt2img", "load", "approx")   # the cases that need the shared random weights
NEEDS_BUILTIN = {"builtin": "built-in model end to end", "approx-builtin": "speed-ups, built-in model"}
MIN_RUNS = 3
DTYPES = ("float32", "float16", "bfloat16")
REFERENCES = ("diffusers", "openvino")
OPENVINO_CASES = ("unet", "vae")   # the networks OpenVINO converts; the rest are diffusers pipelines


@dataclass(frozen=True)
class CompareOptions:
    quick: bool = False                 # tiny models at 64x64: seconds, for tests and a first look
    runs: int = MIN_RUNS                # timed rounds per case, after the warm-up
    device: str = "cpu"
    dtype: str = "float32"              # compute dtype, both sides
    only: tuple[str, ...] = CASES
    steps: int | None = None            # txt2img steps (default: the spec's)
    seed: int = 0                       # of the random weights
    against: str = "diffusers"          # the reference: diffusers, or openvino (unet and vae only)

    def command(self) -> str:
        parts = ["latentdesk bench compare"] + (["--quick"] if self.quick else [])
        parts += [f"--runs {self.runs}", f"--device {self.device}", f"--dtype {self.dtype}"]
        parts += [f"--steps {self.steps}"] if self.steps else []
        parts += [f"--only {' '.join(self.only)}"] if tuple(self.only) not in (CASES, OPENVINO_CASES) else []
        parts += [f"--against {self.against}"] if self.against != "diffusers" else []
        return " ".join(parts)


def models_named(spec, only) -> str:
    """What the report says it ran: the random-weight models, the built-in one, or both."""
    names = [spec.name] if any(name in PAIRED for name in only) else []
    if any(name not in PAIRED for name in only):
        names.append("the built-in model (resources/models/builtin.safetensors)")
    return " and ".join(names)


def cases_run(options: CompareOptions) -> tuple[str, ...]:
    """Against OpenVINO, "every case" means the two it can run."""
    if options.against == "openvino" and tuple(options.only) == CASES:
        return OPENVINO_CASES
    return tuple(options.only)


def check_options(options: CompareOptions) -> None:
    if options.runs < MIN_RUNS:
        raise LatentDeskError(f"--runs must be at least {MIN_RUNS} (a median of fewer says little), not {options.runs}")
    unknown = [name for name in options.only if name not in CASES]
    if unknown:
        raise LatentDeskError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if options.dtype not in DTYPES:
        raise LatentDeskError(f"--dtype must be one of {', '.join(DTYPES)}, not {options.dtype!r}")
    if options.against not in REFERENCES:
        raise LatentDeskError(f"--against must be one of {', '.join(REFERENCES)}, not {options.against!r}")
    if options.against == "openvino":
        others = [name for name in cases_run(options) if name not in OPENVINO_CASES]
        if others:
            raise LatentDeskError(f"--against openvino times {' and '.join(OPENVINO_CASES)} only, not "
                                  f"{', '.join(others)}")
        if options.dtype != "float32" or torch.device(options.device).type != "cpu":
            raise LatentDeskError("--against openvino runs on the CPU and times float32 and OpenVINO's default "
                                  "precision itself: leave --device cpu and --dtype float32")
    if options.steps is not None and options.steps < 1:
        raise LatentDeskError(f"--steps must be at least 1, not {options.steps}")
    if torch.device(options.device).type == "cuda" and not torch.cuda.is_available():
        raise LatentDeskError(f"--device {options.device}: this torch build sees no CUDA device")


def run_comparison(options: CompareOptions, report: Callable[[str], None] = print) -> dict:
    check_options(options)
    require_diffusers()   # fail before minutes of model building, not after
    if options.against == "openvino":
        require_openvino()
    only = cases_run(options)
    spec = TINY if options.quick else SD15
    spec = replace(spec, steps=options.steps) if options.steps else spec
    device, dtype = options.device, getattr(torch, options.dtype)
    results = {"machine": machine_info(device),
               "settings": {"command": options.command(), "quick": options.quick, "runs": options.runs,
                            "device": device, "dtype": options.dtype, "models": models_named(spec, only),
                            "seed": options.seed, "steps": spec.steps, "image_size": spec.image_size,
                            "against": options.against},
               "cases": []}
    if options.against == "openvino":
        results["machine"]["openvino_default_precision"] = default_precision()

    # 1. One set of weights for every paired case.
    pair = None
    if any(name in PAIRED for name in only):
        report(f"building {spec.name} models on {device} ({options.dtype}) ...")
        pair = build_pair(spec, options.seed, device, dtype)

    # 2. The cases, in the order asked for.
    with tempfile.TemporaryDirectory(prefix="latentdesk-bench-") as scratch:
        builders = {"unet": lambda: unet_step_case(pair, device),
                    "vae": lambda: vae_decode_case(pair, device),
                    "txt2img": lambda: txt2img_case(pair, device),
                    "load": lambda: load_case(pair, Path(scratch), device, dtype),
                    "builtin": lambda: builtin_case(device, dtype),
                    "approx": lambda: approx_pair_case(pair, device, options.steps),
                    # --quick: the built-in model for as many steps as the tiny models run
                    "approx-builtin": lambda: approx_builtin_case(device, dtype, spec.steps if options.quick else None)}
        if options.against == "openvino":
            builders = {"unet": lambda: openvino_unet_case(pair, device), "vae": lambda: openvino_vae_case(pair, device)}
        for name in only:
            case = builders[name]()
            if case is None:
                results["cases"].append({"name": name, "title": NEEDS_BUILTIN[name],
                                         "skipped": "no built-in model in resources/models/ yet"})
                report(f"{name}: skipped, no built-in model installed")
                continue
            report(f"{case.title}: warm-up, then {options.runs} rounds")
            results["cases"].append(run_case(case, options.runs, report).as_dict())
            # Let this case's copies go before the next one is built: the OpenVINO UNet case alone holds
            # a bf16 copy, its packed weights and two compiled models, and with the next case's beside
            # them an SD1.5-sized run needed over 20 GB.
            del case
            gc.collect()
    return results
