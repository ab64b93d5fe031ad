"""The text encoder's caption-parsing loss (recipe item 10): a linear head names each attribute a caption names.

    attribute_logits(head, label_classes, context, ids)  -> logits per attribute, from each caption's EOS token
    attribute_cross_entropy(logits, labels)              -> the loss (labels -1 where the caption names nothing)

Stage 2 adds it to the diffusion loss (core/train/diffusion.py); scripts/caption_probe.py trains a text
encoder on it alone, to ask what a caption mix teaches before a run spends hours on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.families import EOS_ID


def attribute_logits(head: nn.Linear, label_classes: tuple[int, ...], context: Tensor, ids: Tensor) -> tuple[Tensor, ...]:
    """The head's logits per attribute (ATTRIBUTES order), read off each caption's final-normed EOS token."""
    eos = context[torch.arange(len(ids), device=ids.device), (ids == EOS_ID).int().argmax(dim=1)]
    return head(eos.float()).split(label_classes, dim=1)


def attribute_cross_entropy(logits: tuple[Tensor, ...], labels: Tensor) -> Tensor:
    """Mean over attributes of the cross-entropy on the captions naming each (a batch of empty captions adds 0)."""
    named = labels >= 0
    per_attribute = [F.cross_entropy(z, y, ignore_index=-1, reduction="sum") / named[:, a].sum().clamp(min=1)
                     for a, (z, y) in enumerate(zip(logits, labels.unbind(1), strict=True))]
    return torch.stack(per_attribute).mean()
