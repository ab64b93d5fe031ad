"""Training a model's preview decoder (core/nets/preview_decoder.py) to imitate that model's VAE decoder.

    teacher_pairs(vae, dataset, n, seed) -> TeacherPairs    latents and the VAE's decodes of them, made once
    PreviewDecoderStage(pairs, config, ...)                  the Stage the shared loop trains (core/train/loop.py)
    preview_psnr(decoder, pairs) -> dB                       agreement with the VAE on pairs it never trained on
    train_preview_decoder(...) -> report                     train (or resume), measure, write the file

The targets are the VAE's own decodes, not the data's images: a preview should show what the final
decode would show for the same latent, the VAE's errors included. The latents are the encoder's
posterior means of the data and two kinds the encoder never makes but sampling passes through: blends
of two items' latents and blurred latents (an early prediction of the clean image is a blurred average
of the images the prompt allows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.atomic_files import write_json
from core.errors import LatentDeskError
from core.loading.preview_decoders import save_preview_decoder
from core.nets.preview_decoder import PreviewDecoder, PreviewDecoderConfig
from core.nets.vae import AutoencoderKL
from core.train.data import BatchRandom, image_and_caption
from core.train.distributed import Distributed
from core.train.loop import train
from core.train.progress import Progress
from core.train.settings import TrainSettings

KINDS = ("clean", "blend", "blur")   # item i is of kind i % 3

# `latentdesk train preview` defaults (the built-in model's decoder was trained with them; docs/BUILTIN_MODEL.md).
PREVIEW_ITEMS = 3_000        # training images: each is encoded and decoded by the VAE once, before training
PREVIEW_EVAL_ITEMS = 300     # held-out images the PSNR against the VAE is measured on
# 8,000 steps: 3,000 gave 28.6 dB against the VAE on held-out images (width 32, 1 block), 8,000 gave 30.4.
PREVIEW_TRAIN = TrainSettings(steps=8_000, batch_size=16, lr=2e-3, warmup_steps=100, lr_decay_until=8_000,
                              ema_decay=0.999, checkpoint_every=1_000, log_every=200)


@dataclass
class TeacherPairs:
    latents: Tensor    # (N, C, h, w) as diffusion sees them (scaled)
    images: Tensor     # (N, 3, h*f, w*f) the VAE's decodes, clamped to [-1, 1], float16 to halve the memory


def _blur(latents: Tensor, sigma: Tensor) -> Tensor:
    """Each latent (B, C, h, w) blurred by its own Gaussian sigma (B,), in latent pixels."""
    offsets = torch.arange(-3, 4, dtype=latents.dtype)
    kernels = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)                     # (B, 7)
    b, c, h, w = latents.shape
    x = latents.reshape(1, b * c, h, w)
    k = kernels.repeat_interleave(c, dim=0)                                    # (B*C, 7)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


@torch.no_grad()
def teacher_pairs(vae: AutoencoderKL, dataset, n: int, seed: int = 0, batch_size: int = 16,
                  stream=None) -> TeacherPairs:
    """Encode the first `n` items (posterior means), vary them by kind, decode every one through the VAE.

    Progress goes to `stream` (stderr by default): at SD sizes on a CPU this takes a while."""
    n = min(n, len(dataset))
    if n < 2:
        raise LatentDeskError(f"a preview decoder needs at least 2 training images, not {n}")
    device = next(vae.parameters()).device
    progress = Progress("encoding and decoding", 2 * n, 0, stream)
    clean = []
    for start in range(0, n, batch_size):
        images = torch.stack([image_and_caption(dataset, i)[0] for i in range(start, min(start + batch_size, n))])
        clean.append(vae.encode_latents(images.to(device), sample=False).float().cpu())
        _report(progress, start + len(images), batch_size)
    latents = torch.cat(clean)                                                  # (n, C, h, w)
    generator = torch.Generator().manual_seed(seed)
    partner = latents[torch.randperm(n, generator=generator)]
    share = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)            # how much of the partner
    sigma = 0.5 + 1.5 * torch.rand(n, generator=generator)
    kind = torch.arange(n) % len(KINDS)
    blend, blur = kind == 1, kind == 2
    latents[blend] = (1 - share[blend]) * latents[blend] + share[blend] * partner[blend]
    if blur.any():   # fewer than 3 items have none, and padding an empty batch is an error
        latents[blur] = _blur(latents[blur], sigma[blur])
    decoded = []
    for z in latents.split(batch_size):
        decoded.append(vae.decode_latents(z.to(device)).float().clamp(-1, 1).cpu().half())
        _report(progress, n + sum(len(d) for d in decoded), batch_size)
    return TeacherPairs(latents, torch.cat(decoded))


def _report(progress: Progress, done: int, batch_size: int) -> None:
    if done % (batch_size * 20) == 0 or done == progress.total:
        progress.update(done, {})


class PreviewObjective(nn.Module):
    """L1 + MSE between the preview decoder's image and the VAE's, per pixel in [-1, 1]."""

    def __init__(self, decoder: PreviewDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: Tensor, images: Tensor) -> dict[str, Tensor]:
        out = self.decoder(latents)
        l1, mse = F.l1_loss(out, images), F.mse_loss(out, images)
        return {"loss": l1 + mse, "l1": l1.detach(), "mse": mse.detach()}


class PreviewDecoderStage:
    kind = "preview decoder"

    def __init__(self, pairs: TeacherPairs, config: PreviewDecoderConfig, data_name: str, vae_name: str, seed: int = 0):
        if pairs.latents.shape[1] != config.latent_channels:
            raise LatentDeskError(f"the VAE makes {pairs.latents.shape[1]}-channel latents, the preview decoder "
                                  f"is set for {config.latent_channels}")
        self.pairs, self.config, self.data_name, self.vae_name, self.seed = pairs, config, data_name, vae_name, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.objective = PreviewObjective(PreviewDecoder(config))
        self.length = len(pairs.latents)

    def inputs(self, indices: list[int], random: BatchRandom) -> dict[str, Tensor]:
        return {"latents": self.pairs.latents[indices], "images": self.pairs.images[indices].float()}

    def description(self) -> dict:
        return {"preview_decoder": asdict(self.config), "data": self.data_name, "items": self.length,
                "vae": self.vae_name, "init_seed": self.seed}


@torch.no_grad()
def preview_psnr(decoder: PreviewDecoder, pairs: TeacherPairs, batch_size: int = 64) -> dict[str, float]:
    """Mean PSNR (dB, pixels on [0, 1]) of the decoder's images against the VAE's, per kind and overall."""
    device = next(decoder.parameters()).device
    values = []
    for z, target in zip(pairs.latents.split(batch_size), pairs.images.split(batch_size), strict=True):
        out = decoder(z.to(device)).float().clamp(-1, 1).cpu()
        mse = ((out - target.float()) / 2).square().mean(dim=(1, 2, 3))
        values.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    values = torch.cat(values)
    kind = torch.arange(len(values)) % len(KINDS)
    report = {name: values[kind == k].mean().item() for k, name in enumerate(KINDS) if (kind == k).any()}
    return {"all": values.mean().item(), **report}


def train_preview_decoder(vae: AutoencoderKL, vae_name: str, dataset, eval_dataset, data_name: str, folder: str | Path,
                          config: PreviewDecoderConfig, settings: TrainSettings, *, items: int, eval_items: int,
                          export_path: str | Path | None = None, stream=None) -> dict:
    """Make the teacher pairs, train (or resume), measure on held-out pairs, write the decoder and a report.

    The decoder goes to `export_path` (default `folder/preview.safetensors`); the report, also returned,
    to `folder/preview.json`. One process: the network is small enough that a CPU trains it in minutes.
    """
    folder = Path(folder)
    processes = Distributed(device=next(vae.parameters()).device)
    # Not cached on disk: at SD sizes the decodes would take gigabytes. A resumed run makes them again
    # (the same ones: the data and seed fix them), then continues from its checkpoint.
    pairs = teacher_pairs(vae, dataset, items, settings.seed, stream=stream)
    stage = PreviewDecoderStage(pairs, config, data_name, vae_name, settings.seed)
    trained = train(stage, settings, folder, processes, stream)
    decoder = trained.final().decoder.eval().requires_grad_(False)
    held_out = teacher_pairs(vae, eval_dataset, eval_items, settings.seed + 1, stream=stream)
    report = {"steps": trained.step, "train_seconds": round(trained.seconds, 1), "items": stage.length,
              "psnr_vs_vae_db": preview_psnr(decoder, held_out), "eval_items": len(held_out.latents),
              "data": data_name, "vae": vae_name, "config": asdict(config)}
    if not math.isfinite(report["psnr_vs_vae_db"]["all"]):
        raise LatentDeskError("the trained preview decoder gives non-finite images; training failed")
    path = Path(export_path) if export_path is not None else folder / "preview.safetensors"
    save_preview_decoder(path, decoder.float().cpu(), {"latentdesk.preview_for": vae_name,
                                                       "latentdesk.preview_psnr_db": f"{report['psnr_vs_vae_db']['all']:.2f}"})
    report["path"] = str(path)
    write_json(folder / "preview.json", report)
    return report
