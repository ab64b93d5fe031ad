"""Glue shared by both loaders (single file, diffusers folder): errors and text encoders."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from core.errors import LatentDeskError, ModelLoadError
from core.families import Family
from core.text.encoder import TextEncoder


@contextmanager
def blame(path: Path, what: str):
    """Conversions raise LatentDeskError without knowing the file; name it (and the part) for the user."""
    try:
        yield
    except ModelLoadError:
        raise
    except LatentDeskError as e:
        raise ModelLoadError(path, f"{what}: {e}") from None


def load_text_encoder(family: Family, states: list[dict[str, torch.Tensor]], path: Path, where: list[str],
                      trimmed: bool = False, stated: list[dict] | None = None):
    """The family's text encoder(s) from one state dict each; `where` names each part's place in the file."""
    for spec_where, state in zip(where, states, strict=True):
        if not state:
            raise ModelLoadError(path, f"text encoder missing: no tensors under {spec_where}")
    with blame(path, f"text encoder ({', '.join(where)})"):
        return TextEncoder.from_state_dicts(family.text_encoders, states, dtype=None, trimmed=trimmed, stated=stated)


def check_context_width(path: Path, family: Family, context_dim: int, text_encoder: TextEncoder) -> None:
    width = sum(model.config.hidden_size for model in text_encoder.models)
    if width != context_dim:
        raise ModelLoadError(path, f"the text encoders give {width}-wide tokens but the UNet's cross-attention "
                                   f"expects {context_dim}: parts of different models mixed ({family.title})")
