"""Stage 1: the autoencoder, latent diffusion's perceptual compression (Rombach et al. 2022, sec. 3.1).

    AutoencoderStage(config, dataset, ...)   what `core.train.loop.train` needs to train an AutoencoderKL
    latent_scale_factor(vae, dataset, n)      1 / std of the latents, as SD's 0.18215 was measured
    psnr(vae, dataset, n)                     reconstruction quality in dB (encode to the mean, decode)
    train_autoencoder(...)                    train, measure, write `autoencoder.safetensors` + a report
    load_autoencoder(path)                    read that file back

The loss is L1 + MSE per pixel, plus a small KL pull toward N(0, 1) weighted as LDM weights
it (KL summed over the latent against the reconstruction loss summed over the pixels, factor
~1e-6). The KL keeps the latent space smooth without costing detail; it leaves the latents'
scale free, which the scale factor fixes. LDM's perceptual (LPIPS) term needs a pretrained
VGG we cannot download; an edge loss on the image gradients and a patch critic trained from
scratch stand in for it and for LDM's adversarial term, each off unless weighted
(core/train/sharpness.py). A closing fine-tune for detail can add them, weigh the loss toward edges
and crop around the object, so that a small object's shape survives the round trip.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from core.atomic_files import save_tensors, write_json
from core.errors import LatentDeskError
from core.nets.vae import AutoencoderKL, VAEConfig
from core.train.data import BatchRandom, image_and_caption
from core.train.distributed import Distributed
from core.train.loop import train
from core.train.settings import TrainSettings
from core.train.sharpness import (
    PatchDiscriminator,
    detail_corners,
    edge_focus_weights,
    edge_loss,
    edge_sharpness,
    hinge_losses,
)

AUTOENCODER_FILE = "autoencoder.safetensors"
REPORT_FILE = "autoencoder.json"
CONFIG_KEY = "latentdesk.vae"


@dataclass(frozen=True)
class AutoencoderLoss:
    kl_weight: float = 1e-6     # LDM's weighting (see the module docstring)
    mse_weight: float = 1.0     # next to L1, which alone leaves flat colours slightly off
    crop: int = 0               # train on random crops this size (0 = whole images); it is fully convolutional
    edge_weight: float = 0.0    # L1 on the image gradients: a blurred edge costs
    adversarial_weight: float = 0.0   # the patch critic's term; 0 = no critic
    critic_channels: int = 64
    # Stage 1 can end in a fine-tune for detail: from `finetune_start` on, the critic's term, edge focus and
    # detail crops apply (LDM also lets reconstruction settle before its critic starts).
    finetune_start: int = 0
    edge_focus: float = 0.0     # the reconstruction loss weighs pixels near the originals' edges (1 + this)x
    detail_crops: bool = False  # crops hold each image's edges (its object) instead of falling anywhere
    # And the encoder stops learning: the fine-tune sharpens the decoder alone and the latents stay the ones
    # reconstruction shaped (SD's VAE fine-tunes were decoder-only too). Measured on the shipped autoencoder,
    # 1,000 steps at lr 1e-4: the critic at 0.01 on the decoder alone kept 32.5 dB (0.48 -> 0.53 edge
    # sharpness); at 0.03 on the whole autoencoder it fell to 30.7 dB.
    freeze_encoder: bool = False

    def __post_init__(self):
        # A negative weight would turn a term into one the training maximises (a negative edge focus makes
        # the loss near edges negative): refuse it where it is given, not thousands of steps later.
        for name in ("edge_weight", "adversarial_weight", "edge_focus"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise LatentDeskError(f"{name.replace('_', '-')} must be a number of at least 0, not {value!r}")
        if not isinstance(self.finetune_start, int) or self.finetune_start < 0:
            raise LatentDeskError(f"finetune-start must be a step (0 or more), not {self.finetune_start!r}")

    def description(self) -> dict:
        """As JSON, the sharpening terms only where used: runs started before they existed still resume."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in _SHARPENING or v != getattr(AutoencoderLoss, k)}


_SHARPENING = ("edge_weight", "adversarial_weight", "critic_channels", "finetune_start", "edge_focus", "detail_crops",
               "freeze_encoder")


def build_autoencoder(config: VAEConfig, seed: int) -> AutoencoderKL:
    """A freshly initialised AutoencoderKL; the same seed gives the same weights whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(config)


class AutoencoderObjective(nn.Module):
    def __init__(self, vae: AutoencoderKL, loss: AutoencoderLoss):
        super().__init__()
        self.vae = vae
        self.weights = loss
        self.critic = PatchDiscriminator(loss.critic_channels) if loss.adversarial_weight else None

    def forward(self, images: Tensor, noise: Tensor, finetune: Tensor | None = None) -> dict[str, Tensor]:
        """images (B, 3, H, W) in [-1, 1]; noise (B, z, H/f, W/f) for the posterior sample; finetune (B,)
        1 once the fine-tune for detail has started."""
        posterior = self.vae.encode(images)
        z = posterior.mean + posterior.std * noise            # reparameterised sample of q(z|x)
        recon = self.vae.decode(z)
        on = finetune[0].to(recon.dtype) if finetune is not None else recon.new_ones(())
        if self.weights.edge_focus:
            with torch.no_grad():   # blended by `on` as a tensor: no host sync in the step, the same graph always
                weights = 1 + on * (edge_focus_weights(images, self.weights.edge_focus) - 1)
            error = recon - images
            l1 = (weights * error.abs()).mean()
            mse = (weights * error.square()).mean()
        else:
            l1 = F.l1_loss(recon, images)
            mse = F.mse_loss(recon, images)
        kl = 0.5 * (posterior.mean.square() + posterior.std.square() - 1 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
        # Per pixel, LDM's "KL sum x weight next to the reconstruction sum" becomes this.
        loss = l1 + self.weights.mse_weight * mse + self.weights.kl_weight * kl / images[0].numel()
        out = {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}
        if self.weights.edge_weight:
            edges = edge_loss(recon, images)
            loss = loss + self.weights.edge_weight * edges
            out["edge"] = edges.detach()
        if self.critic is not None:
            critic_loss, fool = hinge_losses(self.critic, images, recon)
            # Multiplied by 0 before the start rather than skipped: every step then has the same graph,
            # which DDP needs, and the critic's weights still get (zero) gradients.
            loss = loss + on * (self.weights.adversarial_weight * fool + critic_loss)
            out |= {"critic": critic_loss.detach(), "fool": fool.detach()}
        return {"loss": loss, **out}


LATENT_FACTOR = 8
MAX_LATENT_CHANNELS = 16


class AutoencoderStage:
    """Stage 1 for `core.train.loop.train`: items are (image, caption) pairs; captions are ignored."""

    kind = "autoencoder"

    def __init__(self, config: VAEConfig, dataset, data_name: str, loss: AutoencoderLoss = AutoencoderLoss(),
                 seed: int = 0):
        # SD's 1/8 size (the only one tested end to end); any channel count up to SD3's 16: more channels keep
        # more of what a 4x4 latent patch holds (a small object, #26).
        if config.downsample_factor != LATENT_FACTOR or not 1 <= config.z_channels <= MAX_LATENT_CHANNELS:
            raise LatentDeskError(f"the autoencoder must make latents 1/{LATENT_FACTOR} the image size with 1 to "
                                  f"{MAX_LATENT_CHANNELS} channels (this config: {config.z_channels} channels, "
                                  f"1/{config.downsample_factor})")
        self.config, self.dataset, self.data_name, self.loss = config, dataset, data_name, loss
        self.objective = AutoencoderObjective(build_autoencoder(config, seed), loss)
        self.length = len(dataset)
        self.seed = seed
        self.started_from: str | None = None

    def start_from(self, vae: AutoencoderKL, source: str) -> int:
        """Seed the run with a trained autoencoder's weights; returns the step it goes on from (the fine-tune's).

        Only a recipe with a fine-tune can start this way: what comes before it is what `vae` already did.
        """
        if not self.loss.finetune_start:
            raise LatentDeskError("this recipe's stage 1 has no fine-tune to start from a trained autoencoder")
        if replace(vae.config, scale_factor=1.0) != replace(self.config, scale_factor=1.0):
            raise LatentDeskError(f"{source}: its autoencoder is not the shape this recipe trains ({vae.config})")
        self.objective.vae.load_state_dict(vae.state_dict(), strict=True)
        self.started_from = source
        return self.loss.finetune_start

    def inputs(self, indices: list[int], random: BatchRandom) -> dict[str, Tensor]:
        images = torch.stack([image_and_caption(self.dataset, i)[0] for i in indices])  # (B, 3, H, W)
        size = images.shape[-1]
        crop = self.loss.crop
        finetuning = random.step >= self.loss.finetune_start
        if crop and crop < size:
            if self.loss.detail_crops and finetuning:
                corners = detail_corners(images, crop, random.rand(2))
            else:
                corners = random.randint(size - crop + 1, 2)    # (B, 2): top, left
            images = torch.stack([image[:, top:top + crop, left:left + crop]
                                  for image, (top, left) in zip(images, corners.tolist(), strict=True)])
        f = self.config.downsample_factor
        noise = random.randn(self.config.z_channels, images.shape[-2] // f, images.shape[-1] // f)
        inputs = {"images": images, "noise": noise}
        if self.loss.adversarial_weight or self.loss.edge_focus:
            inputs["finetune"] = torch.full((len(images),), float(finetuning))
        return inputs

    def param_groups(self) -> list[dict]:
        """One group; with `freeze_encoder`, the encoder's own, frozen (lr 0) from the fine-tune's start."""
        params = [p for p in self.objective.parameters() if p.requires_grad]
        if not self.loss.freeze_encoder:
            return [{"params": params, "lr_scale": 1.0}]
        vae = self.objective.vae
        encoder = [p for part in (vae.encoder, vae.quant_conv) for p in part.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder}
        return [{"params": [p for p in params if id(p) not in encoder_ids], "lr_scale": 1.0},
                {"params": encoder, "lr_scale": 1.0, "frozen_from": self.loss.finetune_start}]

    def description(self) -> dict:
        return {"vae": asdict(self.config), "loss": self.loss.description(), "data": self.data_name,
                "init_seed": self.seed, "started_from": self.started_from}


# --- measuring ------------------------------------------------------------------------------------

def _batches(dataset, n: int, batch_size: int):
    n = min(n, len(dataset))
    for start in range(0, n, batch_size):
        yield torch.stack([image_and_caption(dataset, i)[0] for i in range(start, min(start + batch_size, n))])


@torch.no_grad()
def latent_scale_factor(vae: AutoencoderKL, dataset, n: int = 512, seed: int = 0, batch_size: int = 16) -> float:
    """1 / std of posterior samples over the first n items: diffusion then sees unit-variance latents.

    This is how SD's 0.18215 was found (LDM, sec. G: "rescale the latent ... by the component-wise
    standard deviation"), on the first batch there; a few hundred images give a steadier number.
    """
    device = next(vae.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    z = torch.cat([vae.encode(x.to(device)).sample(generator).cpu() for x in _batches(dataset, n, batch_size)])
    return 1.0 / z.std().item()


@torch.no_grad()
def psnr(vae: AutoencoderKL, dataset, n: int = 256, batch_size: int = 16) -> float:
    """Mean PSNR in dB over the first n items, pixels in [0, 1], reconstruction = decode(posterior mean)."""
    device = next(vae.parameters()).device
    values = []
    for x in _batches(dataset, n, batch_size):
        x = x.to(device)
        recon = vae.decode(vae.encode(x).mean).clamp(-1, 1)
        mse = ((recon - x) / 2).square().mean(dim=(1, 2, 3))   # (B,), on the [0, 1] scale
        values += (10 * torch.log10(1 / mse.clamp_min(1e-10))).tolist()
    return sum(values) / len(values)


# --- the stage's files ----------------------------------------------------------------------------

def write_autoencoder(path: Path, vae: AutoencoderKL) -> None:
    """The VAE's weights with its config (scale factor included) in the metadata.

    Keys are the original LDM ones without prefix, so `core.loading.checkpoint.load_vae` reads it too.
    """
    save_tensors(path, vae.state_dict(), {CONFIG_KEY: json.dumps(asdict(vae.config))})


def autoencoder_file(path: str | Path) -> Path:
    """The stage-1 file a path names: the file itself or the folder holding `autoencoder.safetensors`."""
    path = Path(path)
    if path.is_dir():
        path = path / AUTOENCODER_FILE
    if not path.is_file():
        raise LatentDeskError(f"{path}: no trained autoencoder here (run `latentdesk train autoencoder` first)")
    return path


def autoencoder_id(path: str | Path) -> str:
    """A short content hash: a diffusion run (and its latent cache) belongs to exactly one autoencoder."""
    digest = hashlib.sha256()
    with open(autoencoder_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> AutoencoderKL:
    """An autoencoder written by stage 1 (a file, or the folder holding `autoencoder.safetensors`)."""
    path = autoencoder_file(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        values = json.loads(metadata[CONFIG_KEY])
        config = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise LatentDeskError(f"{path}: not an autoencoder written by `latentdesk train autoencoder` ({e})") from None
    vae = AutoencoderKL(config)
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval().requires_grad_(False)


def train_autoencoder(stage: AutoencoderStage, settings: TrainSettings, folder: str | Path, eval_dataset,
                      *, scale_images: int = 512, eval_images: int = 256,
                      processes: Distributed | None = None, stream=None, first_step: int = 0) -> dict:
    """Train (or resume), then set the scale factor, measure PSNR and write the stage's files.

    Returns the report also written to `autoencoder.json`.
    """
    processes = processes or Distributed.from_env()
    folder = Path(folder)
    trained = train(stage, settings, folder, processes, stream, first_step)
    report = {}
    if processes.is_main:
        vae = trained.final().vae.requires_grad_(False)
        vae.config = replace(vae.config, scale_factor=latent_scale_factor(vae, stage.dataset, scale_images, settings.seed))
        report = {"steps": trained.step, "train_seconds": round(trained.seconds, 1),
                  "scale_factor": vae.config.scale_factor, "psnr_db": psnr(vae, eval_dataset, eval_images),
                  "eval_images": min(eval_images, len(eval_dataset)), "data": stage.data_name,
                  **edge_sharpness(vae, eval_dataset, eval_images)}
        if not math.isfinite(report["psnr_db"]):
            raise LatentDeskError(f"the trained autoencoder gives PSNR {report['psnr_db']}; training failed")
        write_autoencoder(folder / AUTOENCODER_FILE, vae)
        write_json(folder / REPORT_FILE, report)
    processes.barrier()
    return report
