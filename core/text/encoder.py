"""CLIP text encoders: prompt token ids -> the UNet's cross-attention context (+ SDXL's pooled vector).

The encoders are transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`.
OpenAI-layout weights (SD1, SDXL's first encoder) load as they are; OpenCLIP-layout
weights (SD2's ViT-H, SDXL's bigG) are renamed by `openclip_to_hf` first. Which
hidden layer conditions the UNet, and whether it goes through the final LayerNorm,
comes from each family's `TextEncoderSpec` (see `core.families`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from transformers.activations import ACT2FN

from core.errors import LatentDeskError, shown
from core.families import BANG_ID, EOS_ID, TextEncoderSpec
from core.limits import MAX_TEXT_LAYERS, numbered_parts, whole
from core.text.tokenizer import AddedWords, ClipTokenizer

ClipModel = CLIPTextModel | CLIPTextModelWithProjection

HEAD_DIM = 64            # every SD text encoder (CLIP-L, OpenCLIP-H, bigG) uses 64 channels per head
BOS_ID = 49406
# Layers of the released encoders, by width: CLIP-L, OpenCLIP ViT-H, OpenCLIP bigG. diffusers stores SD2's
# ViT-H cut after layer 23 (the one SD2 conditions on), so a shorter encoder had its last layers removed.

# OpenCLIP text-tower names -> transformers names (under `text_model.`), one table for the whole model ...
_OPENCLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
# ... and one for the modules inside each residual block
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_LAYER_KEY = re.compile(r"encoder\.layers\.([0-9]{1,9})\.")
_HF_BLOCK_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# Contrastive-training leftovers that play no part in text conditioning.
_OPENCLIP_UNUSED = re.compile(r"logit_scale|logit_bias|attn_mask|visual\..*")


def is_openclip_layout(sd: Mapping[str, Tensor]) -> bool:
    return "token_embedding.weight" in sd or any(k.startswith("transformer.resblocks.") for k in sd)


def openclip_to_hf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenCLIP text-tower weights (checkpoint prefix removed) -> transformers CLIP keys.

    OpenCLIP packs q, k, v into one `in_proj` matrix; they become three views of it,
    not copies. `text_projection` is applied as `x @ P` there, as `Linear` (x @ W.T) here.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        if key in _OPENCLIP_TOP:
            out["text_model." + _OPENCLIP_TOP[key]] = tensor
        elif key == "text_projection":
            out["text_projection.weight"] = tensor.t().contiguous()
        elif match := _BLOCK_KEY.fullmatch(key):
            layer, name = match.groups()
            prefix = f"text_model.encoder.layers.{layer}."
            module, _, param = name.rpartition(".")
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = name.removeprefix("attn.in_proj_")
                for proj, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{proj}_proj.{kind}"] = part
            elif module in _OPENCLIP_BLOCK:
                out[f"{prefix}{_OPENCLIP_BLOCK[module]}.{param}"] = tensor
            else:
                raise LatentDeskError(f"Unknown OpenCLIP text encoder weight '{key}'.")
        elif not _OPENCLIP_UNUSED.fullmatch(key):
            raise LatentDeskError(f"Unknown OpenCLIP text encoder weight '{key}'.")
    return out


def openclip_name(hf_key: str) -> str:
    """The OpenCLIP name a transformers key (`text_model.…`) came from, for messages about the user's file."""
    if hf_key == "text_projection.weight":
        return "text_projection"
    top = {hf: oc for oc, hf in _OPENCLIP_TOP.items()}
    if (bare := _bare(hf_key)) in top:
        return top[bare]
    if match := _HF_BLOCK_KEY.fullmatch(hf_key):
        layer, module, param = match.groups()
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return f"transformer.resblocks.{layer}.attn.in_proj_{param}"
        block = {hf: oc for oc, hf in _OPENCLIP_BLOCK.items()}
        if module in block:
            return f"transformer.resblocks.{layer}.{block[module]}.{param}"
    return hf_key


def _bare(key: str) -> str:
    """A key without the `text_model.` level that transformers 5.6 dropped from `CLIPTextModel`."""
    return key.removeprefix("text_model.")


def _canonical(key: str) -> str:
    """The checkpoint name (`text_model.…`, as SD1 files and diffusers folders store it) of a model key."""
    return key if key == "text_projection.weight" else "text_model." + _bare(key)


def clip_config_from_state_dict(sd_hf: Mapping[str, Tensor], *, openclip: bool,
                                pad_id: int | None = None) -> CLIPTextConfig:
    """The `CLIPTextConfig` of transformers-layout weights, read off the tensor shapes.

    `openclip` picks the activation: OpenAI's CLIP-L was trained with quick_gelu,
    OpenCLIP's ViT-H and bigG with exact gelu; the weights cannot tell them apart.
    """
    sd = {_bare(k): v for k, v in sd_hf.items()}
    layers = numbered_parts(sd, _LAYER_KEY, "the text encoder's layers")   # no gaps: one stray key is not 100,000 layers
    needed = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
              "encoder.layers.0.mlp.fc1.weight")
    missing = [k for k in needed if k not in sd or sd[k].ndim != 2]
    if missing or not layers:
        raise LatentDeskError(f"Not a CLIP text encoder: no 2-D weight 'text_model.{(missing or needed)[0]}'.")
    whole("the text encoder's layer count", layers, 1, MAX_TEXT_LAYERS)
    vocab, width = sd[needed[0]].shape
    heads = max(1, width // HEAD_DIM)
    if width % heads:
        raise LatentDeskError(f"Text encoder width {width} is not a multiple of {HEAD_DIM}.")
    projection = sd.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=sd[needed[2]].shape[0],
        projection_dim=projection.shape[0] if projection is not None else width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=sd[needed[1]].shape[0],
        hidden_act="gelu" if openclip else "quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=pad_id if pad_id is not None else (BANG_ID if openclip else EOS_ID),
    )


def build_clip(config: CLIPTextConfig, with_projection: bool, device: str | torch.device = "meta") -> ClipModel:
    """An untrained CLIP text model; on the meta device by default (no memory until weights are assigned)."""
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device(device):
        model = cls(config)
    return model.eval().requires_grad_(False)


def load_clip_weights(model: ClipModel, sd_hf: Mapping[str, Tensor], dtype: torch.dtype | None = None,
                      name_of: Callable[[str], str] = lambda key: key) -> ClipModel:
    """Adopt transformers-layout tensors as `model`'s weights, checking every key and shape.

    The model takes the tensors themselves (`assign=True`): no second copy unless
    `dtype` asks for a conversion. Errors name a tensor as `name_of(checkpoint key)`.
    """
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    for key, tensor in sd_hf.items():
        bare = _bare(key)
        if bare == "embeddings.position_ids":
            continue      # old transformers saved this arange; some merged checkpoints hold a corrupted one
        if bare == "text_projection.weight" and bare not in expected:
            continue      # SD2 keeps OpenCLIP's projection, but only the hidden states condition the UNet
        # `text_model.` is a module level in CLIPTextModelWithProjection (and CLIPTextModel before transformers 5.6)
        name = "text_model." + bare if "text_model." + bare in expected else bare
        if name not in expected:
            raise LatentDeskError(f"Unexpected tensor {shown(name_of(key))}: not a CLIP text encoder Latent Desk knows.")
        if tensor.shape != expected[name].shape:
            raise LatentDeskError(f"Tensor '{name_of(key)}' has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(expected[name].shape)}.")
        state[name] = tensor if dtype is None else tensor.to(dtype)
    if missing := [k for k in expected if k not in state]:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LatentDeskError(f"Tensor '{name_of(_canonical(missing[0]))}'{more} missing.")
    model.load_state_dict(state, strict=True, assign=True)

    # position_ids is a non-persistent buffer, in no file: create it for real where the weights now live.
    embeddings = _text_model(model).embeddings
    weight = embeddings.position_embedding.weight
    embeddings.position_ids = torch.arange(weight.shape[0], device=weight.device)[None]
    return model.eval().requires_grad_(False)


# What the tensor shapes cannot tell; a model may state them (core.loading.checkpoint's embedded config).
STATED_SETTINGS = ("num_attention_heads", "hidden_act")


def clip_from_state_dict(sd_hf: Mapping[str, Tensor], *, openclip: bool, with_projection: bool,
                         dtype: torch.dtype | None = None, pad_id: int | None = None,
                         name_of: Callable[[str], str] = lambda key: key,
                         stated: Mapping[str, object] | None = None) -> ClipModel:
    """Config from the shapes (plus `stated` settings), model on the meta device, then the tensors assigned."""
    config = clip_config_from_state_dict(sd_hf, openclip=openclip, pad_id=pad_id)
    for key, value in (stated or {}).items():
        if key not in STATED_SETTINGS:
            raise LatentDeskError(f"text encoder setting {key!r} cannot be stated (only {', '.join(STATED_SETTINGS)})")
        if key == "num_attention_heads":
            whole(key, value, 1, config.hidden_size)
        elif key == "hidden_act" and (not isinstance(value, str) or value not in ACT2FN):   # looked up by name
            raise LatentDeskError(f"text encoder {key} {shown(value)} is not an activation transformers knows")
        setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise LatentDeskError(f"text encoder width {config.hidden_size} does not split into "
                              f"{config.num_attention_heads} heads")
    return load_clip_weights(build_clip(config, with_projection), sd_hf, dtype, name_of)


def drop_final_layers(sd: Mapping[str, Tensor], count: int) -> dict[str, Tensor]:
    """The state dict without its last `count` transformer layers (either layout)."""
    if count == 0:
        return dict(sd)
    pattern = re.compile(r"(?:transformer\.resblocks|encoder\.layers)\.([0-9]{1,9})\.")
    layers = {int(m.group(1)) for k in sd if (m := pattern.search(k))}
    if len(layers) <= count:
        raise LatentDeskError(f"The text encoder has {len(layers)} layers; the model needs more than {count}.")
    keep = len(layers) - count
    return {k: v for k, v in sd.items() if not ((m := pattern.search(k)) and int(m.group(1)) >= keep)}


def _text_model(model: ClipModel) -> CLIPTextModel:
    return getattr(model, "text_model", model)


class TextEncoder(nn.Module):
    """A family's 1 (SD1, SD2) or 2 (SDXL) CLIP text encoders, used together."""

    def __init__(self, models: Sequence[ClipModel], specs: Sequence[TextEncoderSpec],
                 tokenizer: ClipTokenizer | None = None):
        super().__init__()
        if len(models) != len(specs):
            raise ValueError(f"{len(models)} text encoder models for {len(specs)} specs")
        self.models = nn.ModuleList(models)
        self.specs = tuple(specs)
        self._tokenizer = tokenizer
        # Session-only words past the vocabulary (textual-inversion embeddings, core.text.embeddings):
        # reserved id `added_words.first_id + i` stands for row i of `_added_vectors[k]` in encoder k.
        self.added_words: AddedWords | None = None
        self._added_vectors: tuple[Tensor, ...] = ()

    @classmethod
    def from_state_dicts(cls, specs: Sequence[TextEncoderSpec], state_dicts: Sequence[Mapping[str, Tensor]],
                         dtype: torch.dtype | None = None, *, trimmed: bool = False,
                         stated: Sequence[Mapping[str, object]] | None = None) -> TextEncoder:
        """One state dict per spec, checkpoint prefix removed; OpenCLIP layout (single files) or
        transformers layout (SD1 files, diffusers folders). `trimmed`: the layers the family never uses
        are already gone, as in diffusers folders. Errors are `LatentDeskError`s naming the tensor."""
        models = []
        for index, (spec, sd) in enumerate(zip(specs, state_dicts, strict=True)):
            if not trimmed:
                sd = drop_final_layers(sd, spec.unused_final_layers)
            openclip_file = is_openclip_layout(sd)
            model = clip_from_state_dict(openclip_to_hf(sd) if openclip_file else sd,
                                         openclip=spec.layout == "openclip",
                                         with_projection=spec.pooled and spec.projected,
                                         dtype=dtype, pad_id=spec.pad_id,
                                         name_of=openclip_name if openclip_file else lambda key: key,
                                         stated=stated[index] if stated else None)
            models.append(model)
        return cls(models, specs)

    @property
    def context_dim(self) -> int:
        """Width of the context tokens: the encoders' widths side by side."""
        return sum(model.config.hidden_size for model in self.models)

    @property
    def pooled_dim(self) -> int | None:
        return next(((m.config.projection_dim if s.projected else m.config.hidden_size)
                     for m, s in zip(self.models, self.specs, strict=True) if s.pooled), None)

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer()
        return self._tokenizer

    def set_added_words(self, words: AddedWords | None, vectors: Sequence[Tensor] = ()) -> None:
        """From now on each reserved id of `words` is fed to encoder k as its row of `vectors[k]`
        ((words.count, width k)) instead of a token's embedding; None goes back to the plain vocabulary."""
        if words is None:
            self.added_words, self._added_vectors = None, ()
            return
        widths = [model.config.hidden_size for model in self.models]
        shapes = [tuple(v.shape) for v in vectors]
        if shapes != [(words.count, width) for width in widths]:
            raise ValueError(f"added word vectors of shapes {shapes} for {words.count} ids and widths {widths}")
        self.added_words, self._added_vectors = words, tuple(v.detach() for v in vectors)

    def token_ids(self, prompts: str | Sequence[str]) -> list[Tensor]:
        """One (B, 77) id tensor per encoder: the same tokens, each padded with its encoder's pad id."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        device = self.models[0].device
        return [torch.tensor([self.tokenizer(p, spec.pad_id) for p in prompts], device=device)
                for spec in self.specs]

    def encode(self, prompts: str | Sequence[str], clip_skip: int = 1) -> tuple[Tensor, Tensor | None]:
        return self(self.token_ids(prompts), clip_skip)

    def forward(self, ids: Sequence[Tensor], clip_skip: int = 1) -> tuple[Tensor, Tensor | None]:
        """ids: one (B, 77) LongTensor per encoder -> context (B, 77, context_dim), pooled (B, P) or None.

        `clip_skip` counts like A1111's "CLIP skip": 1 uses the family's own layer,
        2 the one before it, ... (diffusers' `clip_skip` is this minus 1).
        """
        if len(ids) != len(self.models):
            raise ValueError(f"{len(ids)} id tensors for {len(self.models)} text encoders")
        contexts, pooled = [], None
        for index, (model, spec, spec_ids) in enumerate(zip(self.models, self.specs, ids, strict=True)):
            text_model = _text_model(model)
            layer = spec.hidden_layer - (clip_skip - 1)
            n_layers = text_model.config.num_hidden_layers
            if clip_skip < 1 or -layer > n_layers:
                raise LatentDeskError(f"CLIP skip {clip_skip} does not fit a text encoder with {n_layers} layers.")
            out = self._run(index, model, spec_ids)
            hidden = out.hidden_states[layer]    # (B, 77, width); [0] is the embedding, [-1] the last layer
            contexts.append(text_model.final_layer_norm(hidden) if spec.final_norm else hidden)
            if spec.pooled:   # (B, P): the EOS token of the last layer, final norm (and projection)
                pooled = out.text_embeds if spec.projected else out.pooler_output
        return torch.cat(contexts, dim=-1), pooled

    def _run(self, index: int, model: ClipModel, ids: Tensor):
        """One encoder's outputs (all hidden states) for `ids`, reserved ids fed as their added vectors."""
        words = self.added_words
        added = ids >= words.first_id if words is not None else None
        if added is None or not bool(added.any()):
            return model(input_ids=ids, output_hidden_states=True)      # the plain path, untouched

        # transformers 5's CLIPTextModel takes no inputs_embeds, so the token embedding's output is
        # replaced where the ids are reserved, as A1111's sd_hijack EmbeddingsWithFixes does. The model
        # sees id 0 there (A1111's placeholder too): any real id does, as the pooled output is read at
        # the first EOS (eos_token_id = EOS_ID in clip_config_from_state_dict), not at the highest id.
        token_embedding = _text_model(model).embeddings.token_embedding
        table = self._added_vectors[index].to(token_embedding.weight)       # the network's dtype and device
        rows = table[(ids - words.first_id).clamp(min=0)]                   # (B, 77, width)

        def substitute(module, args, output):
            return torch.where(added[..., None], rows, output)

        hook = token_embedding.register_forward_hook(substitute)
        try:
            return model(input_ids=ids.masked_fill(added, 0), output_hidden_states=True)
        finally:
            hook.remove()
