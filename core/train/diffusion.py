"""Stage 2: latent diffusion on the frozen autoencoder's latents (Rombach et al. 2022, sec. 3.2-3.3).

    TextEncoderConfig                 a small transformers CLIPTextModel, trained from scratch with the UNet
    build_latent_cache(vae, data)     every training image encoded once: posterior mean, log-variance, token ids
    DiffusionStage(cache, ...)        what `core.train.loop.train` needs: UNet + text encoder, epsilon objective
    train_diffusion(...)              train (or resume), then export the whole model as one .safetensors

Each step draws, per sample: a latent from the cached posterior (so the UNet still sees
the VAE's sampling noise), t uniform in [0, 999], noise eps, and with probability
`caption_dropout` the empty caption instead of the real one, so the one network learns
the conditional and the unconditional model that classifier-free guidance mixes
(Ho & Salimans 2021). The loss is DDPM's "simple" one, ||eps - eps_theta(x_t, t, c)||^2,
with x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on SD's own schedule.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from core.atomic_files import save_tensors, write_json
from core.errors import LatentDeskError
from core.families import EOS_ID, SD1
from core.nets.unet import UNet, UNetConfig
from core.nets.vae import AutoencoderKL
from core.sampling.denoiser import PREDICTIONS
from core.sampling.schedules import NoiseSchedule, schedule_for
from core.text.encoder import BOS_ID, TextEncoder
from core.text.tokenizer import ClipTokenizer
from core.train.attributes import attribute_cross_entropy, attribute_logits
from core.train.data import BatchRandom, image_and_caption
from core.train.distributed import Distributed
from core.train.export import ModelDefaults, export_model
from core.train.loop import train
from core.train.progress import Progress
from core.train.settings import TrainSettings

CACHE_FILE = "latents.safetensors"
MODEL_FILE = "model.safetensors"
REPORT_FILE = "diffusion.json"
TEXT_SPEC = SD1.text_encoders[0]   # the key layout and conditioning (last layer + final norm, EOS padding)
# With a UNet that takes y (adm_in_channels): the caption's pooled embedding (the final-normed EOS token),
# added to the timestep embedding, so every ResBlock sees the whole caption (FiLM-like, as class labels
# condition ADM); cross-attention still reads the tokens.
POOLED_TEXT_SPEC = dataclasses.replace(TEXT_SPEC, pooled=True, projected=False)


@dataclass(frozen=True)
class TextEncoderConfig:
    """The CLIP text transformer; vocabulary and positions are fixed by the shipped tokenizer."""

    hidden_size: int = 64              # = the UNet's context_dim
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    hidden_act: str = "quick_gelu"     # OpenAI CLIP's, as in SD1's text encoder
    max_position_embeddings: int = 77
    vocab_size: int = 49408

    def clip_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(**asdict(self), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)


@dataclass(frozen=True)
class NoiseTarget:
    """What the UNet learns to predict, and on which noise schedule (core/sampling/schedules.py)."""

    prediction: str = "epsilon"        # "epsilon" (DDPM, SD 1.x) or "v" (Salimans & Ho 2022, SD 2.x 768)
    zero_terminal_snr: bool = False    # the schedule ends in pure noise; needs prediction "v"
    # Weigh each sample's error, measured on x0, by its SNR clamped to [low, high] (min-SNR, Hang et al.
    # 2023, with a floor). Plain v-prediction weighs x0 errors by SNR + 1: samples near pure noise, whose
    # error is mostly what the caption leaves open, then dominate the gradient. None: the plain loss.
    snr_weight_range: tuple[float, float] | None = None
    # Low-frequency noise (training only). A schedule that keeps some image in x_T lets a small latent's
    # mean colour and coarse layout show through; noise with extra power at those frequencies hides
    # them, so the model has to take them from the caption. offset: per-channel constant of this std
    # added (Guttenberg 2023); pyramid: noise drawn at 1/2, 1/4, ... resolution, upsampled and added
    # with weights d, d^2, ... (Whitaker 2023), then rescaled to unit std.
    offset_noise: float = 0.0
    pyramid_noise: float = 0.0

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise LatentDeskError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {self.prediction!r}")
        if self.zero_terminal_snr and self.prediction != "v":
            raise LatentDeskError("a zero-terminal-SNR schedule needs v-prediction: at pure noise, "
                                  "the noise says nothing about the image")
        if self.snr_weight_range is not None and not 0 < self.snr_weight_range[0] <= self.snr_weight_range[1]:
            raise LatentDeskError(f"the SNR weight range must be 0 < low <= high, not {self.snr_weight_range}")
        if self.offset_noise < 0 or not 0 <= self.pyramid_noise < 1:
            raise LatentDeskError(f"offset noise must be >= 0 and the pyramid discount in [0, 1), not "
                                  f"{self.offset_noise} and {self.pyramid_noise}")

    @property
    def schedule(self) -> NoiseSchedule:
        return schedule_for(self.zero_terminal_snr)


def training_noise(random: BatchRandom, shape: torch.Size, target: NoiseTarget) -> Tensor:
    """The noise of one batch: white, plus the target's offset and pyramid components (see NoiseTarget)."""
    channels, height, width = shape
    noise = random.randn(channels, height, width)
    if target.offset_noise:
        noise = noise + target.offset_noise * random.randn(channels, 1, 1)
    if target.pyramid_noise:
        level = 1
        while min(height, width) >> level >= 1:
            coarse = random.randn(channels, height >> level, width >> level)
            noise = noise + target.pyramid_noise ** level * F.interpolate(coarse, size=(height, width),
                                                                         mode="bilinear", align_corners=False)
            level += 1
        noise = noise / noise.std(dim=(1, 2, 3), keepdim=True)
    return noise


def build_networks(unet_config: UNetConfig, text_config: TextEncoderConfig, seed: int) -> tuple[UNet, CLIPTextModel]:
    """Fresh UNet and text encoder; the same seed gives the same weights whatever ran before."""
    if unet_config.context_dim != text_config.hidden_size:
        raise LatentDeskError(f"the UNet's context width {unet_config.context_dim} must equal the text encoder's "
                              f"width {text_config.hidden_size}")
    if unet_config.adm_in_channels not in (None, text_config.hidden_size):
        raise LatentDeskError(f"the UNet's pooled-text input ({unet_config.adm_in_channels}) must be as wide as the "
                              f"text encoder ({text_config.hidden_size})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet(unet_config)
        text_model = CLIPTextModel(text_config.clip_config())
    # LDM's zero_module: each residual branch and the output start at zero, so the untrained
    # UNet is the identity plus nothing and every block starts by learning a small correction.
    for name, module in unet.named_modules():
        if name == "out.2" or name.endswith(("out_layers.3", ".proj_out")):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return unet, text_model.train().requires_grad_(True)


# --- the latent cache -------------------------------------------------------------------------------

@dataclass
class LatentCache:
    """The training set seen through the frozen encoder: encode once, sample a latent every step."""

    mean: Tensor          # (N, z, h, w) posterior means, unscaled
    logvar: Tensor        # (N, z, h, w) posterior log-variances
    ids: Tensor           # (N, K, 77) token ids of each item's K captions, EOS-padded
    scale_factor: float   # the autoencoder's: diffusion runs on z * scale_factor
    # Where the data knows what each caption says (the shapes world): (N, K, A) class of each of A
    # attributes, -1 where the caption leaves it out, and how many classes each attribute has.
    labels: Tensor | None = None
    label_classes: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.mean.shape[0]

    def save(self, path: Path, fingerprint: str) -> None:
        tensors = {"mean": self.mean, "logvar": self.logvar, "ids": self.ids}
        metadata = {"fingerprint": fingerprint, "scale_factor": repr(self.scale_factor)}
        if self.labels is not None:
            tensors["labels"] = self.labels
            metadata["label_classes"] = json.dumps(list(self.label_classes))
        save_tensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> LatentCache | None:
        """The cache at `path` if it was made from the same autoencoder and data, else None."""
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("fingerprint") != fingerprint:
                    return None
                ids = f.get_tensor("ids")
                if ids.dim() == 2:  # a cache written before items had several captions
                    ids = ids[:, None]
                labelled = "labels" in f.keys()
                return cls(f.get_tensor("mean"), f.get_tensor("logvar"), ids, float(metadata["scale_factor"]),
                           f.get_tensor("labels") if labelled else None,
                           tuple(json.loads(metadata["label_classes"])) if labelled else ())
        except (SafetensorError, OSError, KeyError, ValueError):
            return None


def token_ids(tokenizer: ClipTokenizer, caption: str) -> list[int]:
    return tokenizer(caption, TEXT_SPEC.pad_id)


@torch.no_grad()
def build_latent_cache(vae: AutoencoderKL, dataset, batch_size: int = 32, stream=None) -> LatentCache:
    """Encode every (image, caption) item once; progress on `stream` (stderr by default).

    A dataset with a `captions(i)` method (the shapes world) gives each item several phrasings, all
    kept; the trainer picks one at random each time it draws the item. Others have one caption an item.
    A dataset with `caption_labels(i)` and `label_classes` also gives what each caption names (labels).
    """
    device = next(vae.parameters()).device
    tokenizer = ClipTokenizer()
    labelled = hasattr(dataset, "caption_labels")
    means, logvars, ids, labels = [], [], [], []
    progress = Progress("encoding latents", len(dataset), 0, stream)
    for start in range(0, len(dataset), batch_size):
        items = [image_and_caption(dataset, i) for i in range(start, min(start + batch_size, len(dataset)))]
        posterior = vae.encode(torch.stack([image for image, _ in items]).to(device))
        means.append(posterior.mean.cpu())
        logvars.append(posterior.logvar.cpu())
        for i, (_, caption) in enumerate(items, start):
            captions = dataset.captions(i) if hasattr(dataset, "captions") else [caption]
            ids.append([token_ids(tokenizer, text) for text in captions])
            if labelled:
                labels.append(dataset.caption_labels(i))
        done = start + len(items)
        if done % (batch_size * 20) == 0 or done == len(dataset):
            progress.update(done, {})
    return LatentCache(torch.cat(means), torch.cat(logvars), torch.tensor(ids, dtype=torch.int64),
                       vae.config.scale_factor, torch.tensor(labels, dtype=torch.int64) if labelled else None,
                       tuple(dataset.label_classes) if labelled else ())


# --- the objective and the stage --------------------------------------------------------------------

class DiffusionObjective(nn.Module):
    """The eps- or v-prediction loss of a UNet conditioned on a jointly trained text encoder.

    With `attribute_loss` > 0 and `label_classes`, the text encoder also learns to say what a caption
    names: a linear head reads the caption's final-normed EOS token (the pooled embedding, and the
    token that fills the context's padding) and is scored by cross-entropy on each named attribute,
    weighed by `attribute_loss`. The diffusion loss alone lets the small encoder merge words the UNet
    has not learnt to use yet (position words, recipe item 10), after which nothing brings them back.
    The head is training-only: the exported model is the UNet and the text encoder.
    """

    def __init__(self, unet: UNet, text_model: CLIPTextModel, target: NoiseTarget = NoiseTarget(),
                 label_classes: tuple[int, ...] = (), attribute_loss: float = 0.0):
        super().__init__()
        self.unet = unet
        # The same wrapper inference uses, so training conditions exactly as sampling will.
        self.text_encoder = TextEncoder([text_model], [POOLED_TEXT_SPEC if unet.config.adm_in_channels else TEXT_SPEC])
        self.prediction = target.prediction
        self.snr_weight_range = target.snr_weight_range
        self.register_buffer("alphas_cumprod", target.schedule.alphas_cumprod.clone(), persistent=False)
        self.label_classes, self.attribute_loss = tuple(label_classes), attribute_loss
        if attribute_loss > 0:
            self.attribute_head = nn.Linear(text_model.config.hidden_size, sum(self.label_classes))
            # zero: the head starts knowing nothing and pushes nothing into the encoder at step 0
            nn.init.zeros_(self.attribute_head.weight)
            nn.init.zeros_(self.attribute_head.bias)

    @property
    def text_model(self) -> CLIPTextModel:
        return self.text_encoder.models[0]

    def forward(self, latents: Tensor, timesteps: Tensor, noise: Tensor, ids: Tensor,
                labels: Tensor | None = None) -> dict[str, Tensor]:
        """latents x_0 (B, 4, h, w), already scaled; timesteps (B,) int; noise like latents; ids (B, 77);
        labels (B, A) class per attribute, -1 where unnamed (needed with attribute_loss)."""
        abar = self.alphas_cumprod[timesteps][:, None, None, None]      # (B, 1, 1, 1)
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise        # q(x_t | x_0), DDPM eq. 4
        context, pooled = self.text_encoder([ids])                       # (B, 77, width), (B, width) or None
        prediction = self.unet(noisy, timesteps.float(), context, y=pooled)
        if self.prediction == "v":
            target = abar.sqrt() * noise - (1 - abar).sqrt() * latents   # v = α·ε − σ·x0
        else:
            target = noise
        if self.snr_weight_range is None:
            return self._with_attributes(F.mse_loss(prediction, target), context, ids, labels)
        # An error e in x0 is an error e·sqrt(SNR + 1) in v and e·sqrt(SNR) in ε, so the plain loss
        # already weighs x0 errors by SNR + 1 (v) or SNR (ε); rescale that to the clamped SNR.
        snr = abar / (1 - abar)
        natural = snr + 1 if self.prediction == "v" else snr
        weight = snr.clamp(*self.snr_weight_range) / natural                # (B, 1, 1, 1)
        per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
        return self._with_attributes((weight.flatten() * per_sample).mean(), context, ids, labels)

    def _with_attributes(self, loss: Tensor, context: Tensor, ids: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        if not self.attribute_loss:
            return {"loss": loss}
        if labels is None:
            raise LatentDeskError("training with an attribute loss needs each caption's labels")
        attributes = attribute_cross_entropy(attribute_logits(self.attribute_head, self.label_classes, context, ids),
                                             labels)
        return {"loss": loss + self.attribute_loss * attributes, "diffusion": loss.detach(),
                "attributes": attributes.detach()}


class DiffusionStage:
    """Stage 2 for `core.train.loop.train`, on a latent cache."""

    kind = "diffusion"

    def __init__(self, cache: LatentCache, unet_config: UNetConfig, text_config: TextEncoderConfig,
                 data_name: str, autoencoder: str, caption_dropout: float = 0.1, seed: int = 0,
                 target: NoiseTarget = NoiseTarget(), text_lr_scale: float = 1.0, attribute_loss: float = 0.0):
        if not 0 <= caption_dropout < 1:
            raise LatentDeskError(f"caption dropout must be in [0, 1), not {caption_dropout!r}")
        if unet_config.in_channels != cache.mean.shape[1]:
            raise LatentDeskError(f"the UNet takes {unet_config.in_channels} channels, the autoencoder makes "
                                  f"{cache.mean.shape[1]}")
        self.cache, self.unet_config, self.text_config = cache, unet_config, text_config
        self.data_name, self.autoencoder, self.caption_dropout, self.seed = data_name, autoencoder, caption_dropout, seed
        if text_lr_scale <= 0:
            raise LatentDeskError(f"the text encoder's learning-rate scale must be > 0, not {text_lr_scale!r}")
        self.target, self.text_lr_scale = target, text_lr_scale
        if attribute_loss < 0:
            raise LatentDeskError(f"the attribute loss weight must be >= 0, not {attribute_loss!r}")
        if attribute_loss and cache.labels is None:
            raise LatentDeskError("an attribute loss needs data whose captions' attributes are known (--shapes); "
                                  "these captions come without them")
        self.attribute_loss = attribute_loss
        self.objective = DiffusionObjective(*build_networks(unet_config, text_config, seed), target,
                                            cache.label_classes, attribute_loss)
        self.length = len(cache)
        self.empty_ids = torch.tensor(token_ids(ClipTokenizer(), ""), dtype=torch.int64)
        self.started_from: str | None = None

    def start_from(self, unet: UNet, text_model: CLIPTextModel, source: str) -> None:
        """Seed the UNet and text encoder with a trained model's (a fine-tune: new captions for a model that
        already draws); the attribute head, which export leaves out, starts afresh."""
        if unet.config != self.unet_config:
            raise LatentDeskError(f"{source}: its UNet is not the shape this run trains ({unet.config})")
        try:
            self.objective.unet.load_state_dict(unet.state_dict(), strict=True)
            self.objective.text_model.load_state_dict(text_model.state_dict(), strict=True)
        except RuntimeError as e:
            raise LatentDeskError(f"{source}: its networks are not the shape this run trains ({e})") from None
        self.started_from = source

    def inputs(self, indices: list[int], random: BatchRandom) -> dict[str, Tensor]:
        rows = torch.tensor(indices)
        mean, logvar = self.cache.mean[rows], self.cache.logvar[rows]
        shape = mean.shape[1:]
        latents = (mean + torch.exp(0.5 * logvar) * random.randn(*shape)) * self.cache.scale_factor
        timesteps = random.randint(self.target.schedule.num_timesteps)
        noise = training_noise(random, shape, self.target)
        dropped = random.rand() < self.caption_dropout                    # (B,)
        phrasing = torch.zeros(len(rows), dtype=torch.int64)
        if self.cache.ids.shape[1] > 1:  # drawn last, so a cache of one caption an item draws as before
            phrasing = random.randint(self.cache.ids.shape[1])
        ids = torch.where(dropped[:, None], self.empty_ids, self.cache.ids[rows, phrasing])
        drawn = {"latents": latents, "timesteps": timesteps, "noise": noise, "ids": ids}
        if self.attribute_loss:
            drawn["labels"] = self.cache.labels[rows, phrasing].masked_fill(dropped[:, None], -1)
        return drawn

    def param_groups(self) -> list[dict]:
        """The UNet at the schedule's learning rate, the text encoder at `text_lr_scale` times it."""
        if self.text_lr_scale == 1.0:   # one group, as runs made before the scale existed have
            return [{"params": [p for p in self.objective.parameters() if p.requires_grad], "lr_scale": 1.0}]
        text = [p for p in self.objective.text_model.parameters() if p.requires_grad]
        text_ids = {id(p) for p in text}
        unet = [p for p in self.objective.parameters() if p.requires_grad and id(p) not in text_ids]
        return [{"params": unet, "lr_scale": 1.0}, {"params": text, "lr_scale": self.text_lr_scale}]

    def description(self) -> dict:
        described = {"unet": asdict(self.unet_config), "text_encoder": asdict(self.text_config),
                     "data": self.data_name, "autoencoder": self.autoencoder, "caption_dropout": self.caption_dropout,
                     "init_seed": self.seed, "target": asdict(self.target)}
        if self.text_lr_scale != 1.0:   # stated only when set, so earlier runs still resume
            described["text_lr_scale"] = self.text_lr_scale
        if self.started_from:
            described["started_from"] = self.started_from
        if self.attribute_loss:
            described |= {"attribute_loss": self.attribute_loss, "label_classes": list(self.cache.label_classes)}
        return described


def prepare_cache(vae: AutoencoderKL, dataset, folder: Path, fingerprint: str, processes: Distributed,
                  stream=None) -> LatentCache:
    """The latent cache in `folder`, encoded by the main process if missing or stale."""
    path = folder / CACHE_FILE
    if processes.is_main and LatentCache.load(path, fingerprint) is None:
        folder.mkdir(parents=True, exist_ok=True)
        build_latent_cache(vae.to(processes.device), dataset, stream=stream).save(path, fingerprint)
    processes.barrier()
    # Every run trains on the tensors as read back from the file, so a resumed run sees the same bits.
    cache = LatentCache.load(path, fingerprint)
    if cache is None:
        raise LatentDeskError(f"{path}: the latent cache could not be read back")
    return cache


def train_diffusion(vae: AutoencoderKL, autoencoder_id: str, dataset, data_name: str, folder: str | Path,
                    unet_config: UNetConfig, text_config: TextEncoderConfig, settings: TrainSettings, *,
                    caption_dropout: float, defaults: ModelDefaults, target: NoiseTarget = NoiseTarget(),
                    text_lr_scale: float = 1.0, attribute_loss: float = 0.0,
                    export_dtype: str = "fp16",
                    export_path: str | Path | None = None, processes: Distributed | None = None,
                    stream=None, start_from: tuple[UNet, CLIPTextModel, str] | None = None) -> Path | None:
    """Cache latents, train (or resume), export the final (EMA) weights with the VAE (default `folder/model.safetensors`).

    `start_from` (unet, text model, name): a fine-tune of those networks instead of fresh ones.

    Returns the exported path (None in processes other than the main one).
    """
    processes = processes or Distributed.from_env()
    folder = Path(folder)
    fingerprint = {"autoencoder": autoencoder_id, "data": data_name, "items": len(dataset)}
    if hasattr(dataset, "caption_labels"):   # a cache made before labels existed is made again
        fingerprint["labels"] = True
    fingerprint = json.dumps(fingerprint)
    cache = prepare_cache(vae, dataset, folder, fingerprint, processes, stream)
    stage = DiffusionStage(cache, unet_config, text_config, data_name, autoencoder_id, caption_dropout,
                           settings.seed, target, text_lr_scale, attribute_loss)
    if start_from is not None:
        stage.start_from(*start_from)
    trained = train(stage, settings, folder, processes, stream)
    path = None
    if processes.is_main:
        objective = trained.final()
        path = export_model(export_path or folder / MODEL_FILE, objective.unet, vae, objective.text_model, defaults,
                            export_dtype, prediction=target.prediction, zero_terminal_snr=target.zero_terminal_snr)
        write_json(folder / REPORT_FILE, {"steps": trained.step, "train_seconds": round(trained.seconds, 1),
                                          "items": len(cache), "data": data_name, "model": path.name})
        (stream or sys.stderr).write(f"wrote {path}\n")
    processes.barrier()
    return path
