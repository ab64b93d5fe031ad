"""The training loop both stages share: AdamW, EMA, DDP, resumable checkpoints, progress and a loss log.

    train(stage, settings, folder)  runs steps [resumed step, settings.steps) of a `Stage`

A stage is what differs between the autoencoder and the diffusion model: an `objective`
module whose forward returns the loss, the number of training items, and `inputs(indices,
random)` that makes one batch. Everything random in a step comes from `BatchRandom(seed,
step)` and the items from `BatchOrder(seed)` (core/train/data.py), so a checkpoint needs
no data-loader or generator state: resuming at step k continues bit for bit, and the
batches do not depend on how many processes share them.

Checkpoints are `folder/checkpoint/state-<step>.safetensors` (model, EMA, optimizer
tensors) plus `state.json` (step, settings, what was trained, optimizer hyper-parameters),
never pickle. The JSON is replaced last and names its tensor file, so a crash while
writing leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.errors import LatentDeskError
from core.train.data import BatchOrder, BatchRandom

CHECKPOINT_DIR = "checkpoint"
STATE_JSON = "state.json"
LOSS_LOG = "loss.jsonl"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 32             # the global batch; under DDP each process takes batch_size / processes
    lr: float = 1e-4
    seed: int = 0
    warmup_steps: int = 0            # linear ramp up to lr over these first steps
    lr_decay_until: int = 0          # then cosine decay, reaching lr_floor * lr at this step (0: constant lr)
    lr_floor: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # max global gradient norm; 0 = off
    ema_decay: float = 0.0           # 0 = no EMA
    bf16: bool = False               # forward passes autocast to bfloat16; weights and optimizer stay fp32
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LatentDeskError(f"{name.replace('_', '-')} must be a whole number of at least 1, "
                                      f"not {getattr(self, name)!r}")
        if not self.lr > 0:
            raise LatentDeskError(f"the learning rate must be above 0, not {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise LatentDeskError(f"the EMA decay must be in [0, 1), not {self.ema_decay!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): a function of the step alone, so resuming keeps it."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr
        if self.lr_decay_until:
            done = min(1.0, max(0, step - self.warmup_steps) / max(1, self.lr_decay_until - self.warmup_steps))
            lr *= self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * done))
        return lr

    def trajectory(self) -> dict:
        """The settings a resumed run must share: all but how long it runs and how often it reports."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "checkpoint_every", "log_every")}


class Stage(Protocol):
    kind: str                 # "autoencoder" | "diffusion": names the run in messages and checkpoints
    objective: nn.Module      # forward(**inputs) -> {"loss": scalar, other scalars to log}
    length: int               # training items

    def inputs(self, indices: list[int], random: BatchRandom) -> dict[str, Tensor]:
        """This process's share of one batch: items `indices`, random draws from `random`."""

    def description(self) -> dict:
        """What is being trained (configs, data), as JSON; a checkpoint only resumes the same."""


# --- processes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distributed:
    """This process's place in a DDP run started by `torchrun`; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and pick threads/GPU."""
        if device not in ("auto", "cpu", "cuda"):
            raise LatentDeskError(f"device must be auto, cpu or cuda, not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise LatentDeskError("--device cuda: PyTorch sees no CUDA GPU here")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = 0, 0
        if world > 1:
            if not dist.is_initialized():
                # Rank 0 may spend long minutes alone (encoding the latent cache) while the others wait.
                dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=3))
            rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
            return cls(rank, world, torch.device("cuda", local_rank))
        if "OMP_NUM_THREADS" not in os.environ:   # an explicit thread count wins (e.g. two runs side by side)
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # all cores, shared out
        return cls(rank, world, torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch."""
        if batch_size % self.world:
            raise LatentDeskError(f"batch size {batch_size} does not split evenly over {self.world} processes")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        if self.world == 1:
            return dict(values)
        packed = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        return dict(zip(values, (packed / self.world).tolist(), strict=True))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


# --- EMA -------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the trainable parameters, with warm-up.

    decay(n) = min(decay, (1 + n) / (10 + n)) for the n-th update (0-based), as diffusers'
    EMAModel: early averages are not dragged toward the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module, n: int) -> None:
        d = self.decay_at(n)
        named = [(self.shadow[name], p.detach()) for name, p in module.named_parameters() if name in self.shadow]
        shadows, params = [s for s, _ in named], [p for _, p in named]
        # One fused kernel per op over all tensors: on a GPU a per-tensor loop is launch-bound.
        torch._foreach_mul_(shadows, d)
        torch._foreach_add_(shadows, params, alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])


# --- checkpoints -----------------------------------------------------------------------------------

def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, value) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """A `.safetensors` file written atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, path)


def save_checkpoint(folder: Path, tensors: Mapping[str, Tensor], meta: dict) -> Path:
    """`state-<step>.safetensors` then `state.json` naming it; older tensor files are removed after."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state-{meta['step']:08d}.safetensors"
    save_tensors(folder / name, tensors)
    write_json(folder / STATE_JSON, {**meta, "tensors": name})
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()
    return folder / name


def read_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict] | None:
    """(tensors, meta) of the checkpoint in `folder`, or None when there is none."""
    meta_path = folder / STATE_JSON
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(folder / meta["tensors"])
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise LatentDeskError(f"{folder}: the training checkpoint cannot be read ({e}); "
                              "delete the folder to start over") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise LatentDeskError(f"{meta_path}: checkpoint format {meta.get('format')!r} is not {CHECKPOINT_FORMAT}")
    return tensors, meta


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """The optimizer's tensors (`optim.<param>.<name>`) and the rest as JSON."""
    state = optimizer.state_dict()
    tensors, values = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                values[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "values": values}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = defaultdict(dict)
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state[int(index)][name] = value
    for key, value in meta["values"].items():
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    # Checkpoints written before groups had an lr scale lack it; the run's own groups say what it is.
    for saved, current in zip(groups, optimizer.param_groups, strict=False):
        saved.setdefault("lr_scale", current["lr_scale"])
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})


def _prefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _normal(value) -> str:
    """JSON text of a value as it reads back from JSON (tuples become lists), for comparing."""
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True)


# --- progress and log -----------------------------------------------------------------------------

class Progress:
    """One line per report on stderr: step, loss, it/s and time left (log files stay readable)."""

    def __init__(self, name: str, total: int, start: int, stream=None):
        self.name, self.total, self.start = name, total, start
        self.stream = sys.stderr if stream is None else stream
        self.started = time.perf_counter()

    def update(self, step: int, stats: Mapping[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.total - step) / rate if rate else 0.0
        numbers = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self.stream.write(f"{self.name} step {step}/{self.total}  {numbers}  {rate:.2f} it/s  "
                          f"ETA {format_duration(left)}\n")
        self.stream.flush()


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LossLog:
    """`loss.jsonl`: one JSON object per report. Lines past a resumed step (logged after the last
    checkpoint of an interrupted run) are dropped, so the log matches the weights."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if (record := _record(line)) is not None and record["step"] <= resumed_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _record(line: str) -> dict | None:
    """A loss-log line, or None for the half-written last line of a killed run."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


# --- the loop --------------------------------------------------------------------------------------

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
          stream=None) -> Trained:
    """Train `stage` up to `settings.steps`, resuming from `folder/checkpoint` if it holds one."""
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
    start, seconds_before = 0, 0.0
    if (found := read_checkpoint(checkpoints)) is not None:
        tensors, meta = found
        _check_resumable(checkpoints, meta, stage, settings)
        objective.load_state_dict(_unprefixed("model.", tensors), strict=True)
        if ema is not None:
            ema.shadow = {k: v.to(processes.device) for k, v in _unprefixed("ema.", tensors).items()}
        load_optimizer_state(optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        start, seconds_before = meta["step"], meta["seconds"]

    model = objective
    if processes.world > 1:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[processes.device.index] if processes.device.type == "cuda" else None)
    order = BatchOrder(stage.length, settings.batch_size, settings.seed)
    rows = processes.rows(settings.batch_size)
    log = LossLog(folder / LOSS_LOG, start) if processes.is_main else None
    progress = Progress(stage.kind, settings.steps, start, stream) if processes.is_main else None
    began = time.perf_counter()
    running: dict[str, Tensor | float] = defaultdict(float)   # sums since the last log line
    window_start = start
    objective.train()

    def save(step: int) -> None:
        if processes.is_main:
            optim_tensors, optim_meta = optimizer_state(optimizer)
            tensors = {**_prefixed("model.", objective.state_dict()), **optim_tensors,
                       "rng.torch": torch.get_rng_state()}
            if ema is not None:
                tensors |= _prefixed("ema.", ema.shadow)
            save_checkpoint(checkpoints, tensors, {
                "format": CHECKPOINT_FORMAT, "stage": stage.kind, "step": step,
                "samples_seen": step * settings.batch_size, "seconds": seconds_before + time.perf_counter() - began,
                "settings": asdict(settings), "description": stage.description(), "optimizer": optim_meta})
        processes.barrier()

    # 2. Steps.
    for step in range(start, settings.steps):
        lr = settings.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        inputs = stage.inputs(order.indices(step)[rows], BatchRandom(settings.seed, step, settings.batch_size, rows))
        with attention_for_training(processes.device):
            with torch.autocast(processes.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                out = model(**{k: v.to(processes.device) for k, v in inputs.items()})
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
        if settings.grad_clip:
            running["grad_norm"] += nn.utils.clip_grad_norm_(params, settings.grad_clip).detach()
        optimizer.step()
        if ema is not None:
            ema.update(objective, step)
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


def _check_resumable(folder: Path, meta: dict, stage: Stage, settings: TrainSettings) -> None:
    def refuse(what: str) -> LatentDeskError:
        return LatentDeskError(f"{folder} holds a checkpoint of a different run ({what}); "
                               "resume with the same settings, or give another --out folder")

    if meta["stage"] != stage.kind:
        raise refuse(f"a {meta['stage']} run, not {stage.kind}")
    names = {f.name for f in fields(TrainSettings)}
    saved = TrainSettings(**{k: v for k, v in meta["settings"].items() if k in names})
    for key, value in settings.trajectory().items():
        if _normal(saved.trajectory()[key]) != _normal(value):
            raise refuse(f"{key.replace('_', '-')} {saved.trajectory()[key]} there, {value} now")
    if _normal(meta["description"]) != _normal(stage.description()):
        now, then = stage.description(), meta["description"]
        differing = [k for k in dict.fromkeys([*now, *then]) if _normal(then.get(k)) != _normal(now.get(k))]
        raise refuse(f"different {', '.join(differing) or 'model or data'}")
