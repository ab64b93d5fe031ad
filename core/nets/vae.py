"""AutoencoderKL: the perceptual compression stage of latent diffusion.

Module attribute names equal the original checkpoint keys (after the
`first_stage_model.` prefix), so a single-file checkpoint loads with
`load_state_dict(strict=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.nets.attention_kernel import attention
from core.nets.packed_weights import Conv2d
from core.nets.upsample import nearest2x_conv


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128                      # `ch` in the original config
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # one level per entry; each but the last halves the size
    num_res_blocks: int = 2
    z_channels: int = 4                           # latent channels
    norm_groups: int = 32
    scale_factor: float = 0.18215                 # latents are multiplied by this before diffusion

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return Conv2d(c_in, c_out, 3, padding=1)


_QUERY_SLICE = 4096


def channels_last_on_cpu(x: Tensor) -> Tensor:
    """x in channels-last (NHWC) memory order when on the CPU, else as it is.

    oneDNN's CPU convolutions work on channels-last blocks: given NCHW, every convolution reorders its
    input and its output, which in the decoder's top levels (128-256 channels at 512x512) costs about
    half as much again as the convolution itself in bfloat16. GroupNorm, SiLU, the additions and the
    folded upsampler keep the format, so one reorder at the start serves the whole network. The
    attention's q, k and v then come out as (B, HW, C) contiguous, which PyTorch's fused (flash)
    SDPA kernel takes; in NCHW they were strided and SDPA fell back to its unfused path.
    Measured at 512 px on a 2-core AVX512-BF16 CPU in bfloat16: decode 0.74-0.75 of the NCHW decoder's
    time (one thread; with the one-convolution upsampler of core/nets/upsample.py), 0.99 of OpenVINO's
    (2 threads, docs/PERFORMANCE.md); encode 0.79-0.91 (float32: 0.48-0.75), measured before the
    attention kept the layout, so the whole encoder after its mid-block still ran NCHW then.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head attention over all pixels, a slice of queries at a time.

    Where no fused SDPA kernel takes a 512-wide head (Apple MPS, some CUDA
    setups) PyTorch falls back to a path that holds the whole T x T matrix:
    1 GiB at 1024x1024 px (T = 128*128), 16 GiB at 2048x2048. Query rows are
    independent, so slicing them changes nothing but the peak memory; up to
    SD's native 512x512 (T = 4096) it is one call.
    """
    if q.shape[2] <= _QUERY_SLICE:
        return attention(q, k, v)
    return torch.cat([attention(qs, k, v) for qs in q.split(_QUERY_SLICE, dim=2)], dim=2)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip (LDM's ResnetBlock with temb_channels=0, dropout=0)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = _conv3(c_in, c_out)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = _conv3(c_out, c_out)
        self.nin_shortcut = Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # In-place SiLU on the fresh GroupNorm output saves one full-size activation,
        # which at the decoder's top level is (B, 128, H, W): 512 MiB at 1024x1024 in fp32.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        # Added into the fresh convolution output rather than into a new tensor: one full-size
        # allocation less, and on the CPU each new one pays a page fault per 4 KiB written.
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs as in the original."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = _attention(q, k, v)                                  # (B, 1, HW, C); scale C^-1/2 as in the original
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        # Into x's layout: at batch 1 the view's batch stride is whatever SDPA left there, and the
        # convolution then takes a channels-last view for NCHW, and so would the rest of the decoder.
        h = torch.empty_like(x).copy_(h)
        return self.proj_out(h).add_(x)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        # The original pads right/bottom only, so output pixel i sees input 2i..2i+2;
        # symmetric padding=1 would shift the latent grid by half a pixel.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return nearest2x_conv(x, self.conv)


class Level(nn.Module):
    """One resolution: `down.{i}` of the encoder or `up.{i}` of the decoder.

    The encoder/decoder attach `downsample`/`upsample` to every level but the
    coarsest/finest, under those names because the checkpoint keys use them.
    """

    def __init__(self, c_in: int, c_out: int, n_blocks: int, groups: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(n_blocks))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Image (B, in, H, W) -> Gaussian moments (B, 2*z, H/f, W/f), before quant_conv."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c, g = config, config.norm_groups
        widths = [c.base_channels * m for m in c.channel_mult]
        self.conv_in = _conv3(c.in_channels, c.base_channels)
        self.down = nn.ModuleList()
        c_in = c.base_channels
        for i, c_out in enumerate(widths):
            level = Level(c_in, c_out, c.num_res_blocks, g)
            if i < len(widths) - 1:
                level.downsample = Downsample(c_out)
            self.down.append(level)
            c_in = c_out
        self.mid = MidBlock(c_in, g)
        self.norm_out = _norm(c_in, g)
        self.conv_out = _conv3(c_in, 2 * c.z_channels)   # mean and log-variance

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(channels_last_on_cpu(x))   # as the decoder: see channels_last_on_cpu
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True)).contiguous()


class Decoder(nn.Module):
    """Latent (B, z, h, w) -> image (B, out, h*f, w*f), after post_quant_conv."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c, g = config, config.norm_groups
        widths = [c.base_channels * m for m in c.channel_mult]
        c_in = widths[-1]
        self.conv_in = _conv3(c.z_channels, c_in)
        self.mid = MidBlock(c_in, g)
        # `up.{i}` is indexed by level like the encoder's `down.{i}`, but built and
        # run from the coarsest level down; each has one ResnetBlock more than `down`.
        coarse_to_fine = []
        for i in reversed(range(len(widths))):
            level = Level(c_in, widths[i], c.num_res_blocks + 1, g)
            if i > 0:
                level.upsample = Upsample(widths[i])
            coarse_to_fine.append(level)
            c_in = widths[i]
        self.up = nn.ModuleList(coarse_to_fine[::-1])
        self.norm_out = _norm(c_in, g)
        self.conv_out = _conv3(c_in, c.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(channels_last_on_cpu(z)))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        # Callers get the usual NCHW layout back; at 3 channels the reorder costs next to nothing.
        return self.conv_out(F.silu(self.norm_out(h), inplace=True)).contiguous()


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, diag(std^2)), from moments (B, 2*z, h, w)."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        # Clamped as in LDM's DiagonalGaussianDistribution so exp() neither overflows nor hits 0.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        # Noise is drawn on the CPU (generator must be a CPU one) and then moved, so
        # a seed gives the same latents on CPU and GPU — as diffusers' randn_tensor does.
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """LDM's KL-regularised autoencoder: image in [-1, 1] <-> latents at 1/f the size."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        z = config.z_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # LDM's embed_dim equals z_channels in every SD VAE, so both are z-wide here.
        self.quant_conv = Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = Conv2d(z, z, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x: (B, in, H, W) in [-1, 1], H and W multiples of config.downsample_factor."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """z: unscaled latents (B, z, h, w) -> image (B, out, h*f, w*f), roughly in [-1, 1], not clamped."""
        return self.decoder(self.post_quant_conv(z))

    @torch.no_grad()
    def encode_latents(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Image in [-1, 1] -> latents as diffusion sees them (z * scale_factor), in the VAE's dtype."""
        posterior = self.encode(x.to(self.dtype))
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scale_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents as diffusion sees them -> image roughly in [-1, 1], in the VAE's dtype."""
        return self.decode(latents.to(self.dtype) / self.config.scale_factor)
