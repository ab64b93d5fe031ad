"""Child process of the load benchmark: load one checkpoint one way, print what it cost as one JSON line.

    python -m app.cli.bench.load_probe ours|diffusers FILE --config DIR [--device cpu] [--dtype float32]
                                    [--generate-steps N --size PX]

A fresh process per load, so the peak resident memory (VmHWM) is this load's (and, with
--generate-steps, the image's after it) and nothing left over from earlier runs. Imports happen before the clock starts: each side pays for its own, but importing
torch and diffusers is not what this measures (the JSON still records the memory they take).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from app.cli.bench.timing import synchronize


def status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024   # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == "darwin" else maxrss / 1024   # bytes on macOS, kB elsewhere


def loader(which: str, path: str, config: str, device: str, dtype: torch.dtype):
    if which == "ours":
        from core.loading.checkpoint import load_model
        return lambda: load_model(path, dtype=dtype, device=device)
    from diffusers import StableDiffusionPipeline
    # `config` lends the architecture's configs, so nothing is fetched; the weights come from the file.
    return lambda: StableDiffusionPipeline.from_single_file(
        path, config=config, local_files_only=True, torch_dtype=dtype, safety_checker=None,
        requires_safety_checker=False).to(device)


def generator(which: str, model, steps: int, size: int):
    """One txt2img of `steps` guided steps at `size` px on the loaded model, each side its own way."""
    prompt = "a lighthouse on a cliff at dusk, oil painting"
    if which == "ours":
        from core.generate import generate
        from core.request import GenerationRequest
        request = GenerationRequest(prompt=prompt, steps=steps, guidance=7.5, sampler="Euler", width=size, height=size)
        return lambda: generate(request, model)
    return lambda: model(prompt, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                         generator=torch.Generator("cpu").manual_seed(0), output_type="pil")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("ours", "diffusers"))
    parser.add_argument("file")
    parser.add_argument("--config", required=True, help="diffusers config folder for from_single_file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--generate-steps", type=int, default=0,
                        help="then generate one image of this many steps: peak_rss_mb covers it too")
    parser.add_argument("--size", type=int, default=512, help="the generated image's side, px")
    args = parser.parse_args(argv)

    load = loader(args.which, args.file, args.config, args.device, getattr(torch, args.dtype))
    before = status_mb("VmRSS")
    synchronize(args.device)
    started = time.perf_counter()
    model = load()
    synchronize(args.device)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    if before is not None:
        result["rss_before_load_mb"] = before
    if args.generate_steps:
        result["peak_rss_load_mb"] = result["peak_rss_mb"]
        with torch.no_grad():
            generator(args.which, model, args.generate_steps, args.size)()
        result["peak_rss_mb"] = peak_rss_mb()   # the peak over loading and generating
    if torch.device(args.device).type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(args.device) / 2 ** 20
    del model
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
