"""Reading textual-inversion embedding files, and fitting one to a model's text encoders.

    read_embedding_file(path) -> EmbeddingFile     what a file holds, without a model (`latentdesk inspect` too)
    fit_embedding(file, text_encoder) -> Embedding its vectors for each of the model's encoders, or why not

Using a fitted embedding in prompts is core/text/embeddings.py's (set_embeddings). The `.safetensors`
layouts found in the wild, each checked against its publisher's code:

- "A1111 emb_params": {"emb_params": (n, width)}, what kohya-ss/sd-scripts `train_textual_inversion.py`
  `save_weights` writes and A1111 reads as a one-tensor dict.
- "A1111 string_to_param": A1111's own `.pt` layout {"string_to_param": {"*": (n, width)}, ...}
  (stable-diffusion-webui `modules/textual_inversion/textual_inversion.py`, `Embedding.save`),
  flattened by safetensors conversion to the one key "string_to_param.*".
- "diffusers": one tensor named after its token, (width,) or (n, width): diffusers
  `loaders/textual_inversion.py` `_retrieve_tokens_and_embeddings` ("len(state_dict) == 1") and
  A1111's `load_from_file` ("diffuser concepts", a 1-D tensor taken as one vector).
- "SDXL pair": {"clip_l": (n, 768), "clip_g": (n, 1280)}, one half per SDXL text encoder
  (A1111 `load_from_file`: "'clip_g' in data and 'clip_l' in data"; diffusers' SDXL docs load
  `state_dict["clip_l"]` into text_encoder and `state_dict["clip_g"]` into text_encoder_2).

Every shape is checked from the header before a byte of tensor data is read; SafetensorsFile
refuses pickles and broken headers and checks the values for NaN/Inf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from core.errors import ModelLoadError, shown
from core.loading.safetensors_io import FLOAT_DTYPES, SafetensorsFile
from core.text.embeddings import FAMILY_BY_WIDTHS, Embedding, described_widths
from core.text.encoder import TextEncoder
from core.text.prompts import CHUNK_TOKENS

MAX_VECTORS = CHUNK_TOKENS     # more would not fit in one 75-token chunk, where A1111 keeps an embedding whole
MAX_WIDTH = 8192               # released text encoders are 768, 1024 and 1280 wide
PAIR = ("clip_l", "clip_g")
# What each released encoder's token embedding width is called in embedding files and messages.
ENCODER_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


@dataclass(frozen=True)
class EmbeddingFile:
    """What an embedding file holds, read without a model."""

    path: Path
    vectors: Mapping[str, Tensor]      # "clip_l" / "clip_h" / "clip_g" (or "clip" if of no released width) -> (n, width)
    format: str                        # "A1111 emb_params" | "A1111 string_to_param" | "diffusers" | "SDXL pair"
    token: str | None = None           # the token a diffusers-form file is stored under (prompts use `name`)
    metadata: Mapping[str, str] | None = None

    @property
    def name(self) -> str:
        """The word a prompt uses: the file's stem, as in A1111."""
        return self.path.stem

    @property
    def count(self) -> int:
        """Vectors per encoder: the token places the name takes in a prompt."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(v.shape[1] for v in self.vectors.values())

    @property
    def family(self) -> str | None:
        """"sd1" | "sd2" | "sdxl" when the widths are a released family's, else None."""
        return FAMILY_BY_WIDTHS.get(self.widths)


def read_embedding_file(path: str | Path) -> EmbeddingFile:
    """An embedding `.safetensors` file, every shape checked before it is read; ModelLoadError naming the file if not."""
    path = Path(path)
    file = SafetensorsFile(path)
    keys = file.keys()
    if not keys:
        raise ModelLoadError(path, "holds no tensors: not an embedding")
    if sorted(keys) == sorted(PAIR):
        form, token, names = "SDXL pair", None, {key: key for key in PAIR}
    elif len(keys) == 1:
        key = keys[0]
        form, token = _single_form(key)
        names = {key: None}          # named by its width below
    else:
        raise ModelLoadError(path, f"holds {len(keys)} tensors ({shown(sorted(keys)[:4])}): an embedding holds "
                                   "one (or SDXL's clip_l and clip_g); is this a LoRA or a model?")

    sizes = {key: _vector_shape(path, key, file.entries[key].dtype, file.entries[key].shape) for key in names}
    if len({n for n, _ in sizes.values()}) > 1:
        raise ModelLoadError(path, "its clip_l and clip_g halves hold different numbers of vectors "
                                   f"({sizes['clip_l'][0]} and {sizes['clip_g'][0]})")
    tensors = file.read_many(list(names), torch.float32)          # NaN/Inf refused there
    vectors = {label or ENCODER_BY_WIDTH.get(sizes[key][1], "clip"): tensors[key].reshape(sizes[key])
               for key, label in names.items()}                   # a pair in PAIR's order: clip_l, clip_g
    return EmbeddingFile(path, vectors, form, token, file.metadata)


def _single_form(key: str) -> tuple[str, str | None]:
    """(format, diffusers token) of a one-tensor file by its key."""
    if key == "emb_params":
        return "A1111 emb_params", None
    if key.startswith("string_to_param."):
        return "A1111 string_to_param", None
    return "diffusers", key


def _vector_shape(path: Path, key: str, dtype: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(n, width) of a stored tensor, or ModelLoadError: from the header alone, before any data is read."""
    if dtype not in FLOAT_DTYPES:
        raise ModelLoadError(path, f"tensor {key!r} holds {dtype} numbers; embedding vectors are floating point")
    if len(shape) not in (1, 2):
        raise ModelLoadError(path, f"tensor {key!r} has shape {shape}; an embedding is (vectors, width)")
    count, width = (1, shape[0]) if len(shape) == 1 else shape
    if not 1 <= count <= MAX_VECTORS:
        raise ModelLoadError(path, f"tensor {key!r} holds {count} vectors; an embedding has 1 to {MAX_VECTORS} "
                                   f"(the tokens of one prompt chunk)")
    if not 1 <= width <= MAX_WIDTH:
        raise ModelLoadError(path, f"tensor {key!r} is {width} wide; no text encoder is")
    return count, width


def fit_embedding(file: EmbeddingFile, text_encoder: TextEncoder) -> Embedding:
    """The file's vectors for each of the text encoder's models, matched by width (SD1: 768, SD2: 1024,
    SDXL: clip_l 768 + clip_g 1280); ModelLoadError naming both when the file is for another family."""
    widths = tuple(model.config.hidden_size for model in text_encoder.models)
    left = dict(file.vectors)
    chosen = []
    for width in widths:
        key = next((k for k, v in left.items() if v.shape[1] == width), None)
        if key is None:
            break
        chosen.append(left.pop(key))
    if len(chosen) != len(widths) or left:
        raise ModelLoadError(file.path, f"this embedding is {described_widths(file.widths)}; the model's text "
                                        f"encoder{'s are' if len(widths) > 1 else ' is'} {described_widths(widths)}, "
                                        "so it cannot be used with this model")
    return Embedding(file.name, file.path, tuple(chosen))


