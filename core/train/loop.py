"""The training loop both stages share: AdamW, EMA, DDP, resumable checkpoints, progress and a loss log.

    train(stage, settings, folder)  runs steps [resumed step, settings.steps) of a `Stage`

A stage is what differs between the autoencoder and the diffusion model: an `objective`
module whose forward returns the loss, the number of training items, and `inputs(indices,
random)` that makes one batch. Everything random in a step comes from `BatchRandom(seed,
step)` and the items from `BatchOrder(seed)` (core/train/data.py), so a checkpoint needs
no data-loader or generator state: resuming at step k continues bit for bit, and the
batches do not depend on how many processes share them.

The pieces it puts together live beside it: settings.py (TrainSettings, the learning-rate
schedule), distributed.py (DDP), ema.py, checkpoints.py (what is saved and what resumes) and
progress.py (the progress line and loss.jsonl).
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.errors import LatentDeskError
from core.precision import autocast_pays
from core.train.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    check_resumable,
    read_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_tensors,
)
from core.train.data import BatchOrder, BatchRandom
from core.train.distributed import Distributed
from core.train.ema import EMA
from core.train.progress import LOSS_LOG, LossLog, Progress
from core.train.settings import TrainSettings


class Stage(Protocol):
    kind: str                 # "autoencoder" | "diffusion": names the run in messages and checkpoints
    objective: nn.Module      # forward(**inputs) -> {"loss": scalar, other scalars to log}
    length: int               # training items

    def inputs(self, indices: list[int], random: BatchRandom) -> dict[str, Tensor]:
        """This process's share of one batch: items `indices`, random draws from `random`."""

    def description(self) -> dict:
        """What is being trained (configs, data), as JSON; a checkpoint only resumes the same."""


@dataclass
class Trained:
    objective: nn.Module
    ema: EMA | None
    step: int
    seconds: float           # training time over all runs of this folder

    def final(self) -> nn.Module:
        """The objective with the weights to ship: the EMA's where there is one."""
        if self.ema is not None:
            self.ema.copy_to(self.objective)
        return self.objective


def attention_for_training(device: torch.device):
    """The attention kernels a training step runs under on `device`.

    On the CPU, PyTorch's default (flash) attention has a slow backward for the short sequences these
    models attend over (8x8 and 4x4 latents, 77 caption tokens): in a stage-2 step of the built-in
    recipe (batch 256, bf16) it took 40 % of the time, 60 ms a call. The plain kernel (two matmuls and
    a softmax) cut the step from 3.77 s to 2.77 s. Inference keeps the default, which is faster there.
    """
    return sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else nullcontext()


def train(stage: Stage, settings: TrainSettings, folder: str | Path, processes: Distributed | None = None,
          stream=None, first_step: int = 0) -> Trained:
    """Train `stage` up to `settings.steps`, resuming from `folder/checkpoint` if it holds one.

    Without a checkpoint the run starts at `first_step`, from the weights the objective holds: a
    fine-tune seeded with an earlier run's weights (its optimizer state starts afresh).
    """
    processes = processes or Distributed.from_env()
    folder = Path(folder)
    if processes.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    checkpoints = folder / CHECKPOINT_DIR
    objective = stage.objective.to(processes.device)
    params = [p for p in objective.parameters() if p.requires_grad]
    # A stage may give some parameters their own learning rate, as a multiple of the schedule's.
    groups = stage.param_groups() if hasattr(stage, "param_groups") else [{"params": params, "lr_scale": 1.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    ema = EMA(objective, settings.ema_decay) if settings.ema_decay else None

    # 1. Resume.
    start, seconds_before = first_step, 0.0
    if (found := read_checkpoint(checkpoints)) is not None:
        tensors, meta = found
        check_resumable(checkpoints, meta, stage.kind, stage.description(), settings)
        restore_training_state(tensors, meta, objective, optimizer, ema, processes.device)
        start, seconds_before = meta["step"], meta["seconds"]

    model = objective
    if processes.world > 1:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[processes.device.index] if processes.device.type == "cuda" else None)
    order = BatchOrder(stage.length, settings.batch_size, settings.seed)
    rows = processes.rows(settings.batch_size)
    log = LossLog(folder / LOSS_LOG, start) if processes.is_main else None
    progress = Progress(stage.kind, settings.steps, start, stream) if processes.is_main else None
    autocast = settings.bf16 and autocast_pays(processes.device)
    if settings.bf16 and not autocast and processes.is_main:
        print(f"{stage.kind}: bfloat16 runs no faster than float32 on this CPU, so the steps run in float32 "
              "(the losses differ a little from an autocast run's)", file=stream or sys.stderr)
    began = time.perf_counter()
    running: dict[str, Tensor | float] = defaultdict(float)   # sums since the last log line
    window_start = start
    objective.train()

    def save(step: int) -> None:
        if processes.is_main:
            tensors, optim_meta = training_tensors(objective, optimizer, ema)
            save_checkpoint(checkpoints, tensors, {
                "format": CHECKPOINT_FORMAT, "stage": stage.kind, "step": step,
                "samples_seen": step * settings.batch_size, "seconds": seconds_before + time.perf_counter() - began,
                "settings": asdict(settings), "description": stage.description(), "optimizer": optim_meta})
        processes.barrier()

    # 2. Steps.
    for step in range(start, settings.steps):
        lr = settings.lr_at(step)
        for group in optimizer.param_groups:
            # lr 0 freezes a group exactly: AdamW's step and its decoupled weight decay both scale with lr.
            group["lr"] = 0.0 if step >= group.get("frozen_from", step + 1) else lr * group["lr_scale"]
        inputs = stage.inputs(order.indices(step)[rows], BatchRandom(settings.seed, step, settings.batch_size, rows))
        with attention_for_training(processes.device):
            with torch.autocast(processes.device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(**{k: v.to(processes.device) for k, v in inputs.items()})
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
        if settings.grad_clip:
            running["grad_norm"] += nn.utils.clip_grad_norm_(params, settings.grad_clip).detach()
        optimizer.step()
        if ema is not None:
            restart = settings.ema_restart
            if step == restart and restart:
                ema.restart(objective)
            ema.update(objective, step - restart if step >= restart else step)   # warm-up anew after a restart
        # Summed as tensors and read at log time: a float() every step stalls a GPU on each sync.
        for k, v in out.items():
            running[k] += v.detach().float()

        done = step + 1
        log_now = done % settings.log_every == 0 or done == settings.steps
        if log_now or done % settings.checkpoint_every == 0:
            # Checked before any checkpoint is written, so a diverged model is never saved.
            if not math.isfinite(float(running["loss"])):
                raise LatentDeskError(f"{stage.kind} training diverged between steps {window_start + 1} and {done} "
                                      f"(loss {float(running['loss'])}); try a lower --lr than {settings.lr}")
        if log_now:
            stats = processes.mean({k: float(v) / (done - window_start) for k, v in running.items()})
            running.clear()
            window_start = done
            if processes.is_main:
                log.write({"step": done, "lr": lr, **stats,
                           "seconds": round(seconds_before + time.perf_counter() - began, 1)})
                progress.update(done, {k: v for k, v in stats.items() if k != "grad_norm"})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save(done)

    objective.eval()
    step = max(start, settings.steps)
    return Trained(objective, ema, step, seconds_before + time.perf_counter() - began)

