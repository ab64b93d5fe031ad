"""Reading LoRA files as they are found in the wild, for one loaded model.

`read_lora(path, model)` reads a `.safetensors` LoRA (never a pickle: SafetensorsFile refuses those),
works out which of the model's layers each stored layer changes, and checks every shape against
that layer before any tensor is read. It understands:

- kohya / LyCORIS names: `lora_unet_<module path, dots as underscores>`, `lora_te_` (SDXL: `lora_te1_`,
  `lora_te2_`) + the text encoder's module path, the UNet named after diffusers' modules (SD1/SD2
  trainers) or the original LDM ones (SDXL trainers); parts `.lora_down.weight` / `.lora_up.weight`
  / `.lora_mid.weight` / `.alpha`, LoHa's `.hada_w{1,2}_{a,b}`, LoKr's `.lokr_w{1,2}[_a|_b]`;
- diffusers / PEFT names: `unet.` / `text_encoder.` / `text_encoder_2.` + the dotted diffusers module
  path, or a bare UNet path, with `.lora_A.weight` / `.lora_B.weight` (or `.lora.down/up.weight`).

Our UNet keeps the LDM names, so a diffusers-named key goes through the diffusers -> LDM module table
of core/loading/convert_unet.py, inverted once per model here (not a second copy of the layout).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from core.errors import ModelLoadError, shown
from core.families import FAMILIES
from core.loading.convert_unet import _module_table
from core.loading.lora_math import ShapeMismatch, check_shapes, form_of
from core.loading.safetensors_io import SafetensorsFile
from core.model import DiffusionModel

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "te1", "lora_te1_": "te1", "lora_te2_": "te2"}
KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha"} | {
    name: name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")}
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "te1", "text_encoder_2.": "te2"}
PEFT_PARTS = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
              "alpha": "alpha"}
NETWORK_TITLES = {"unet": "UNet", "te1": "text encoder", "te2": "second text encoder"}
# The text width each family's UNet attends to (the cross-attention key projection's input), as released.
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
CROSS_ATTENTION_KEY = re.compile(r"attn2[._]to_k$")
# Attention at the UNet's top level: SD1 and SD2 have it, SDXL never does.
TOP_LEVEL_ATTENTION = re.compile(r"^(input_blocks_1_1_|down_blocks[._]0[._]attentions)")
NAMES_SHOWN = 5


@dataclass(frozen=True)
class LayerChange:
    """One layer's stored change: which network and module, the form, and its factors."""

    network: str                  # "unet" | "te1" | "te2"
    module: str                   # the module's name in our network
    form: str                     # lora_math.LORA / LOHA / LOKR
    tensors: dict[str, Tensor]    # part name ("down", "hada_w1_a", "alpha", ...) -> tensor as stored


@dataclass
class LoraFile:
    path: Path
    changes: list[LayerChange]
    unmatched: list[str] = field(default_factory=list)   # stored layers that fit no module of the model

    @property
    def name(self) -> str:
        return self.path.stem


def read_lora(path: str | Path, model: DiffusionModel, strict: bool = True) -> LoraFile:
    """A LoRA file's changes to `model`'s layers, every shape checked; ModelLoadError naming the file if not.

    `strict`: stored layers that fit no module of the model refuse the file (named in the message);
    otherwise they are listed in `unmatched` for the caller to show. A file none of whose layers fit
    is refused either way.
    """
    path = Path(path)
    file = SafetensorsFile(path)
    groups, unknown = group_keys(file.keys())
    _check_family(path, groups, file.shapes, model)
    modules = {net: lora_layers(network) for net, network in model_networks(model).items()}
    names = {net: _name_index(net, found, model) for net, found in modules.items()}

    matched, unmatched = [], [f"{key} (not a LoRA part)" for key in unknown]
    for (net, stored), parts in groups.items():
        form = form_of(parts)
        module = names.get(net, {}).get(stored)
        if form is None:
            unmatched.append(f"{stored} (parts {', '.join(sorted(parts))}: not a form Latent Desk knows)")
        elif module is None:
            unmatched.append(stored)
        else:
            target = tuple(modules[net][module].weight.shape)
            try:
                check_shapes(form, {p: file.shapes[key] for p, key in parts.items()}, target)
            except ShapeMismatch as e:
                raise ModelLoadError(path, f"layer {shown(stored)} does not fit this model's {module}: {e}") from None
            matched.append((net, module, form, parts))

    if not matched:
        if not unmatched:
            raise ModelLoadError(path, "it holds no LoRA layers: not a LoRA file")
        raise ModelLoadError(path, "none of its layers fit this model (is it a LoRA for another model type?): "
                                   f"{_listed(unmatched)}")
    if unmatched and strict:
        raise ModelLoadError(path, f"{len(unmatched)} of its layers fit nothing in this model: {_listed(unmatched)}")
    tensors = file.read_many([key for *_, parts in matched for key in parts.values()])   # NaN/Inf refused here
    changes = [LayerChange(net, module, form, {p: tensors[key] for p, key in parts.items()})
               for net, module, form, parts in matched]
    return LoraFile(path, changes, unmatched)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(shown(n, 160) for n in names[:NAMES_SHOWN]) + more


def group_keys(keys: list[str]) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    """(network, stored layer name) -> {part: key}, and the keys that are no LoRA part at all."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    unknown = []
    for key in keys:
        found = _split_kohya(key) or _split_peft(key)
        if found is None:
            unknown.append(key)
            continue
        net, layer, part = found
        groups.setdefault((net, layer), {})[part] = key
    return groups, unknown


def _split_kohya(key: str) -> tuple[str, str, str] | None:
    for prefix, net in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            layer, _, suffix = key.partition(".")
            if suffix in KOHYA_PARTS:
                return net, layer.removeprefix(prefix), KOHYA_PARTS[suffix]
    return None


def _split_peft(key: str) -> tuple[str, str, str] | None:
    for suffix, part in PEFT_PARTS.items():
        if key.endswith("." + suffix):
            layer = key[:-len(suffix) - 1].removeprefix("base_model.model.")
            for prefix, net in PEFT_PREFIXES.items():
                if layer.startswith(prefix):
                    return net, layer.removeprefix(prefix), part
            return "unet", layer, part     # diffusers' bare-UNet form
    return None


def _check_family(path: Path, groups, shapes, model: DiffusionModel) -> None:
    """Refuse a LoRA whose own signs say it was made for another family, naming both."""
    meant = families_meant(groups, shapes)
    if meant and model.family.name not in meant:
        titles = " or ".join(FAMILIES[name].title for name in sorted(meant))
        raise ModelLoadError(path, f"this LoRA is made for {titles}, but the model is {model.family.title}")


def families_meant(groups, shapes) -> set[str] | None:
    """The families a LoRA can be for, from what it holds; None when nothing in it tells."""
    if any(net == "te2" for net, _ in groups):
        return {"sdxl"}
    for (net, layer), parts in groups.items():
        if net == "unet" and CROSS_ATTENTION_KEY.search(layer):
            down = parts.get("down") or parts.get("hada_w1_b")
            width = shapes[down][1] if down and len(shapes[down]) > 1 else None
            if width in CONTEXT_WIDTHS:
                return {CONTEXT_WIDTHS[width]}
    if any(net == "unet" and TOP_LEVEL_ATTENTION.match(layer) for net, layer in groups):
        return {"sd1", "sd2"}
    return None


def model_networks(model: DiffusionModel) -> dict[str, nn.Module]:
    nets = {"unet": model.unet}
    for i, clip in enumerate(model.text_encoder.models):
        nets[f"te{i + 1}"] = clip
    return nets


def lora_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The layers a LoRA can change: every Linear and Conv2d, by name."""
    return {name: m for name, m in network.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def _name_index(net: str, layers: dict[str, nn.Module], model: DiffusionModel) -> dict[str, str]:
    """Every name a file may give a layer (dotted, underscored; ours and diffusers') -> our module name."""
    index: dict[str, str] = {}
    for name in layers:
        aliases = {name}
        if net == "unet":
            aliases.add(diffusers_unet_names(model.unet).get(name, name))
        else:   # transformers >= 5.6 dropped `text_model.` from CLIPTextModel's own names; files keep it
            bare = name.removeprefix("text_model.")
            aliases |= {bare, "text_model." + bare}
        for alias in aliases:
            index[alias] = name
            index[alias.replace(".", "_")] = name
    return index


# Weakly by the UNet: a strong reference here would keep a model the app let go in memory.
_DIFFUSERS_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def diffusers_unet_names(unet: nn.Module) -> dict[str, str]:
    """Our (LDM) UNet module name -> diffusers' name for the same module, by inverting convert_unet's table."""
    cached = _DIFFUSERS_NAMES.get(unet)
    if cached is not None:
        return cached
    inverse = sorted(((ours, theirs, {v: k for k, v in (renames or {}).items()} if renames else None)
                      for theirs, (ours, renames) in _module_table(unet.config).items()),
                     key=lambda row: -len(row[0]))
    names = {}
    for name in lora_layers(unet):
        for ours, theirs, back in inverse:
            if name == ours:
                names[name] = theirs
            elif name.startswith(ours + "."):
                rest = name[len(ours) + 1:]
                if back is not None:
                    inner = next((o for o in back if rest == o or rest.startswith(o + ".")), None)
                    if inner is None:
                        break
                    rest = back[inner] + rest[len(inner):]
                names[name] = f"{theirs}.{rest}"
            else:
                continue
            break
    _DIFFUSERS_NAMES[unet] = names
    return names
