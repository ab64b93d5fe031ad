"""What reading a model file or folder gives before the DiffusionModel is assembled."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.families import Family


@dataclass
class LoadedParts:
    """What a file or folder gave: the requested networks and the signals about them."""

    family: Family
    parts: dict[str, torch.nn.Module]
    metadata: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    scheduler_prediction: str | None = None
