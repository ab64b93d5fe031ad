"""A training run's resumable state on disk: weights, EMA, optimizer and random state; never pickle.

    folder/checkpoint/state-<step>.safetensors   model.*, ema.*, optim.<param>.<name>, rng.torch
    folder/checkpoint/state.json                 step, settings, what was trained, optimizer hyper-parameters

The JSON is replaced last and names its tensor file, so a crash while writing leaves the previous
checkpoint whole. A checkpoint only resumes the run that wrote it (`check_resumable`): the same
stage, model, data and every setting that shapes the trajectory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from core.atomic_files import save_tensors, write_json
from core.errors import LatentDeskError
from core.train.ema import EMA
from core.train.settings import TrainSettings

CHECKPOINT_DIR = "checkpoint"
STATE_JSON = "state.json"
CHECKPOINT_FORMAT = 1


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


# --- what goes in the tensor file ---------------------------------------------------------------------

def training_tensors(objective: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: EMA | None) -> tuple[dict[str, Tensor], dict]:
    """Everything a resumed run needs as tensors, and the optimizer's other state as JSON."""
    optim_tensors, optim_meta = optimizer_state(optimizer)
    tensors = {**_prefixed("model.", objective.state_dict()), **optim_tensors, "rng.torch": torch.get_rng_state()}
    if ema is not None:
        tensors |= _prefixed("ema.", ema.shadow)
    return tensors, optim_meta


def restore_training_state(tensors: Mapping[str, Tensor], meta: dict, objective: nn.Module,
                           optimizer: torch.optim.Optimizer, ema: EMA | None, device: torch.device) -> None:
    """Put a checkpoint's weights, EMA, optimizer and torch random state back in place."""
    objective.load_state_dict(_unprefixed("model.", tensors), strict=True)
    if ema is not None:
        ema.shadow = {k: v.to(device) for k, v in _unprefixed("ema.", tensors).items()}
    load_optimizer_state(optimizer, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])


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


# --- is it the same run? ------------------------------------------------------------------------------

def check_resumable(folder: Path, meta: dict, kind: str, description: dict, settings: TrainSettings) -> None:
    """Refuse a checkpoint of another stage, another model or data, or other trajectory settings."""
    def refuse(what: str) -> LatentDeskError:
        return LatentDeskError(f"{folder} holds a checkpoint of a different run ({what}); "
                               "resume with the same settings, or give another --out folder")

    if meta["stage"] != kind:
        raise refuse(f"a {meta['stage']} run, not {kind}")
    names = {f.name for f in fields(TrainSettings)}
    saved = TrainSettings(**{k: v for k, v in meta["settings"].items() if k in names})
    for key, value in settings.trajectory().items():
        if _normal(saved.trajectory()[key]) != _normal(value):
            raise refuse(f"{key.replace('_', '-')} {saved.trajectory()[key]} there, {value} now")
    if _normal(meta["description"]) != _normal(description):
        then = meta["description"]
        differing = [k for k in dict.fromkeys([*description, *then])
                     if _normal(then.get(k)) != _normal(description.get(k))]
        raise refuse(f"different {', '.join(differing) or 'model or data'}")


def _normal(value) -> str:
    """JSON text of a value as it reads back from JSON (tuples become lists), for comparing.

    Keys whose value is None are dropped: a config field added later with a None default (the UNet's
    time_cond_proj_dim) must not make every checkpoint written before it look like another run.
    """
    return json.dumps(_without_none(json.loads(json.dumps(value))), sort_keys=True)


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
