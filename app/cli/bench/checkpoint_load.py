"""Checkpoint load time and peak memory: one SD1-layout single file, loaded by ours and by diffusers'
`StableDiffusionPipeline.from_single_file`, each in a fresh process (app/cli/bench/load_probe.py) that then
makes one short image, so the peak memory is that of a generation, not of the load alone.

    write_single_file(pair, path) -> path      the pair's weights in the original LDM layout, fp16, as
                                               SD1.5 is distributed (~2 GB at full size)
    load_case(pair, folder, device, dtype) -> Case
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.cli.bench.pair import ModelPair
from app.cli.bench.reference import write_pipeline_config
from app.cli.bench.timing import Case, Metrics
from core.errors import LatentDeskError
from core.train.export import export_state

PROBE_TIMEOUT_S = 1800
READ_CHUNK = 64 * 2 ** 20


def write_single_file(pair: ModelPair, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The layout `latentdesk train` exports (core/train/export.py), which is SD1's own."""
    model = pair.ours
    state = export_state(model.unet, model.vae, model.text_encoder.models[0])
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}, path)
    return path


def read_through(path: Path) -> None:
    """The warm-up: read the file once so both sides find it in the page cache, not on disk."""
    with open(path, "rb") as file:
        while file.read(READ_CHUNK):
            pass


GENERATE_STEPS = 2   # after the load, one guided txt2img this long: the peak RSS then covers generating too


def probe(which: str, path: Path, config: Path, device, dtype: torch.dtype, size: int) -> Metrics:
    command = [sys.executable, "-m", "app.cli.bench.load_probe", which, str(path), "--config", str(config),
               "--device", str(device), "--dtype", str(dtype).removeprefix("torch."),
               "--generate-steps", str(GENERATE_STEPS), "--size", str(size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}   # a from_single_file that wants the hub must fail, not fetch
    root = Path(__file__).resolve().parents[2]     # the child imports core from this checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
    if done.returncode != 0:
        raise LatentDeskError(f"loading {path.name} with {which} failed in its subprocess:\n"
                              + done.stderr.strip()[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_case(pair: ModelPair, folder: Path, device, dtype: torch.dtype) -> Case:
    path = write_single_file(pair, folder / "sd1-random.safetensors")
    config = write_pipeline_config(pair.spec, folder / "diffusers-config")
    size_mb = path.stat().st_size / 2 ** 20
    size = pair.spec.image_size
    contenders = {side: (lambda side=side: probe(side, path, config, device, dtype, size))
                  for side in ("ours", "diffusers")}
    return Case("load", f"checkpoint load, {size_mb:,.0f} MiB fp16 single file (peak RSS: load, then a "
                        f"{GENERATE_STEPS}-step {size}x{size} txt2img)", contenders,
                warmup=lambda: read_through(path),
                details={"file_mb": size_mb, "stored_dtype": "float16", "loaded_dtype": str(dtype),
                         "how": "fresh subprocess per load; imports before the clock; seconds = the load alone; "
                                "peak RSS = VmHWM (ru_maxrss where /proc is missing) after the load and one "
                                f"{GENERATE_STEPS}-step guided txt2img at {size}x{size}, so it includes the imports; "
                                "peak_rss_load_mb = the peak before generating",
                         "diffusers": "StableDiffusionPipeline.from_single_file(config=local folder, "
                                      "local_files_only=True, safety_checker=None)",
                         "ours": "core.loading.checkpoint.load_model"})
