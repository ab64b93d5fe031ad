"""The weight change ΔW each LoRA form stands for, and the shapes it must have to fit a layer.

Every form is stored as small factors; ΔW has the target weight's shape (out, in) for a Linear
layer or (out, in, kh, kw) for a Conv2d. Conv factors are flattened to matrices over
(out, in·kh·kw) and the product reshaped at the end, which is how kohya's LoCon, LyCORIS and
diffusers all define them:

- LoRA / LoCon: ΔW = up @ down · alpha/rank  (rank = down's first dimension; alpha missing or 0 = rank)
  with `lora_mid` (LoCon's Tucker core, (r, r, kh, kw)): ΔW[o,i,h,w] = Σ up[o,m] mid[m,n,h,w] down[n,i]
- LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/rank  (rank = w1b's first dimension)
- LoKr: ΔW = kron(w1, w2) · alpha/rank, w1 = w1a @ w1b and w2 = w2a @ w2b where stored factorised;
  rank is w1b's (else w2b's) first dimension, and with neither factorised the scale is 1.

`check_shapes` runs on the header's shapes before any tensor is read, so no allocation is ever
sized by a number from the file that was not first compared with the layer it is meant for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

LORA, LOHA, LOKR = "LoRA", "LoHa", "LoKr"
# The tensor names (after the layer's name) of each form; `alpha` belongs to all of them.
FORM_PARTS = {
    LORA: ("down", "up", "mid"),
    LOHA: ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    LOKR: ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}


class ShapeMismatch(Exception):
    """The factors do not make a ΔW of the layer's shape; the text says how (for the caller's message)."""


def form_of(parts: Mapping) -> str | None:
    """Which form a layer's set of tensor names is, or None when it is incomplete or unknown."""
    names = set(parts) - {"alpha"}
    if {"down", "up"} <= names and names <= set(FORM_PARTS[LORA]):
        return LORA
    if names == set(FORM_PARTS[LOHA]):
        return LOHA
    has_w1 = "lokr_w1" in names or {"lokr_w1_a", "lokr_w1_b"} <= names
    has_w2 = "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names
    if has_w1 and has_w2 and names <= set(FORM_PARTS[LOKR]):
        return LOKR
    return None


def _matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """A weight or factor shape as the matrix it is multiplied as: (rows, everything else)."""
    if len(shape) < 2:
        raise ShapeMismatch(f"a factor of shape {list(shape)} is not a matrix")
    return shape[0], math.prod(shape[1:])


def check_shapes(form: str, shapes: Mapping[str, tuple[int, ...]], target: tuple[int, ...]) -> None:
    """Raise ShapeMismatch unless the factors' shapes make exactly a ΔW of shape `target`."""
    out, fan_in = _matrix(target)
    kernel = math.prod(target[2:]) if len(target) == 4 else 1
    if "alpha" in shapes and math.prod(shapes["alpha"]) != 1:
        raise ShapeMismatch(f"alpha has shape {list(shapes['alpha'])}, not a single number")
    if form == LORA:
        rank, down_in = _matrix(shapes["down"])
        up_out, up_rank = _matrix(shapes["up"])
        if "mid" in shapes:
            mid = shapes["mid"]
            if len(target) != 4 or tuple(mid) != (up_rank, rank, *target[2:]):
                raise ShapeMismatch(f"lora_mid {list(mid)} does not join up {list(shapes['up'])} and "
                                    f"down {list(shapes['down'])} into a {list(target)} kernel")
            down_in *= kernel   # down is 1x1 and the kernel is mid's
        elif up_rank != rank:
            raise ShapeMismatch(f"lora_up {list(shapes['up'])} and lora_down {list(shapes['down'])} disagree on the rank")
        if (up_out, down_in) != (out, fan_in):
            raise ShapeMismatch(f"makes a {up_out}x{down_in} change for a layer of {list(target)}")
        if rank > min(out, fan_in):
            raise ShapeMismatch(f"rank {rank} is larger than the layer it changes ({list(target)})")
    elif form == LOHA:
        for i in ("1", "2"):
            a_out, a_rank = _matrix(shapes[f"hada_w{i}_a"])
            b_rank, b_in = _matrix(shapes[f"hada_w{i}_b"])
            if a_rank != b_rank or (a_out, b_in) != (out, fan_in):
                raise ShapeMismatch(f"hada_w{i}_a/b {list(shapes[f'hada_w{i}_a'])}, {list(shapes[f'hada_w{i}_b'])} "
                                    f"do not make a change for a layer of {list(target)}")
            if a_rank > min(out, fan_in):
                raise ShapeMismatch(f"rank {a_rank} is larger than the layer it changes ({list(target)})")
    elif form == LOKR:
        w1 = _kron_factor(shapes, "1", out, fan_in)
        w2 = _kron_factor(shapes, "2", out, fan_in)
        if (w1[0] * w2[0], w1[1] * w2[1]) != (out, fan_in):
            raise ShapeMismatch(f"kron of {list(w1)} and {list(w2)} is not a layer of {list(target)}")


def _kron_factor(shapes: Mapping[str, tuple[int, ...]], i: str, out: int, fan_in: int) -> tuple[int, int]:
    """The (rows, cols) of LoKr's w1 or w2, checking its low-rank parts when it is stored as two."""
    if f"lokr_w{i}" in shapes:
        rows, cols = _matrix(shapes[f"lokr_w{i}"])
    else:
        rows, rank = _matrix(shapes[f"lokr_w{i}_a"])
        b_rank, cols = _matrix(shapes[f"lokr_w{i}_b"])
        if rank != b_rank:
            raise ShapeMismatch(f"lokr_w{i}_a and lokr_w{i}_b disagree on the rank")
        if rank > min(rows, cols):
            raise ShapeMismatch(f"rank {rank} of lokr_w{i} is larger than the factor it makes ({rows}x{cols})")
    # Each factor divides the layer; checked here so the product check above cannot overflow anything.
    if rows < 1 or cols < 1 or out % rows or fan_in % cols:
        raise ShapeMismatch(f"lokr_w{i} ({rows}x{cols}) does not divide a {out}x{fan_in} layer")
    return rows, cols


def scale_of(form: str, tensors: Mapping[str, Tensor]) -> float:
    """alpha / rank as each trainer defines it (see the module docstring)."""
    if form == LORA:
        rank = tensors["down"].shape[0]
    elif form == LOHA:
        rank = tensors["hada_w1_b"].shape[0]
    elif "lokr_w1_b" in tensors or "lokr_w2_b" in tensors:
        rank = tensors["lokr_w1_b" if "lokr_w1_b" in tensors else "lokr_w2_b"].shape[0]
    else:
        return 1.0
    alpha = float(tensors["alpha"].reshape(-1)[0]) if "alpha" in tensors else 0.0
    return (alpha if alpha else rank) / rank


def delta_weight(form: str, tensors: Mapping[str, Tensor], target: tuple[int, ...]) -> Tensor:
    """ΔW·scale in float32, shaped like the layer's weight. Shapes were checked by `check_shapes`."""
    t = {k: v.float() for k, v in tensors.items()}
    out = target[0]
    if form == LORA:
        up = t["up"].reshape(out, -1)
        down = t["down"].reshape(t["down"].shape[0], -1)
        if "mid" in t:
            delta = torch.einsum("om,mnhw,ni->oihw", up, t["mid"], down)
        else:
            delta = up @ down
    elif form == LOHA:
        w1 = t["hada_w1_a"].reshape(out, -1) @ t["hada_w1_b"].reshape(t["hada_w1_b"].shape[0], -1)
        w2 = t["hada_w2_a"].reshape(out, -1) @ t["hada_w2_b"].reshape(t["hada_w2_b"].shape[0], -1)
        delta = w1 * w2
    else:
        delta = torch.kron(_kron_part(t, "1"), _kron_part(t, "2"))
    return delta.reshape(target).mul_(scale_of(form, tensors))


def _kron_part(t: Mapping[str, Tensor], i: str) -> Tensor:
    if f"lokr_w{i}" in t:
        w = t[f"lokr_w{i}"]
        return w.reshape(w.shape[0], -1)
    a, b = t[f"lokr_w{i}_a"], t[f"lokr_w{i}_b"]
    return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)
