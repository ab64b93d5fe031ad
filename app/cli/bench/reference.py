"""diffusers, the reference the comparison measures against: imported here, lazily, and nowhere else
in core/ (app/cli/bench/load_probe.py's child process aside). Latent Desk itself never needs it.

    require_diffusers() -> the diffusers module, or LatentDeskError naming the missing package
    diffusers_networks(spec) -> {"unet", "vae", "text_encoder"}: randomly initialised diffusers modules
    diffusers_pipeline(networks, spec) -> StableDiffusionPipeline built offline from those modules
    write_pipeline_config(spec, folder) -> a weightless diffusers folder for from_single_file(config=...)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.cli.bench.specs import CLIP_TOKENS, SCHEDULER, BenchSpec
from core.errors import LatentDeskError
from core.text.tokenizer import tokenizer_dir


def require_diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise LatentDeskError("`latentdesk bench compare` measures against diffusers, which is not installed: "
                              f"pip install diffusers ({e})") from None
    return diffusers


def diffusers_networks(spec: BenchSpec, seed: int) -> dict[str, torch.nn.Module]:
    """PyTorch's default random init, seeded: random but realistically scaled weights."""
    diffusers = require_diffusers()
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):   # leave the caller's random state alone
        torch.manual_seed(seed)
        return {"unet": diffusers.UNet2DConditionModel(**spec.unet).eval(),
                "vae": diffusers.AutoencoderKL(**spec.vae).eval(),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**spec.clip)).eval()}


def clip_tokenizer():
    """transformers' CLIP tokenizer on the vocabulary we ship: no hub download."""
    from transformers import CLIPTokenizer
    return CLIPTokenizer(str(tokenizer_dir() / "vocab.json"), str(tokenizer_dir() / "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=CLIP_TOKENS)


def diffusers_pipeline(networks: dict[str, torch.nn.Module]):
    """The pipeline a diffusers user runs, from modules in memory (no hub); no safety checker, as ours has none."""
    diffusers = require_diffusers()
    pipe = diffusers.StableDiffusionPipeline(
        vae=networks["vae"], text_encoder=networks["text_encoder"], tokenizer=clip_tokenizer(),
        unet=networks["unet"], scheduler=diffusers.EulerDiscreteScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_pipeline_config(spec: BenchSpec, folder: Path) -> Path:
    """Configs only: what `from_single_file(config=folder)` reads instead of fetching them from the hub."""
    diffusers = require_diffusers()
    from transformers import CLIPTextConfig

    def write(relative: str, data: dict) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")

    version = diffusers.__version__
    write("model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": version,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False})
    write("unet/config.json", {"_class_name": "UNet2DConditionModel", "_diffusers_version": version, **spec.unet})
    write("vae/config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": version, **spec.vae})
    write("scheduler/scheduler_config.json", {"_class_name": "EulerDiscreteScheduler", **SCHEDULER})
    config = CLIPTextConfig(**spec.clip)
    config.architectures = ["CLIPTextModel"]
    config.save_pretrained(folder / "text_encoder")
    clip_tokenizer().save_pretrained(folder / "tokenizer")
    return folder
