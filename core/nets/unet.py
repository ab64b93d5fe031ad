"""The denoising UNet of latent diffusion (LDM's openaimodel), SD1.x/SD2.x/SDXL.

Module attribute names equal the original checkpoint keys (after the
`model.diffusion_model.` prefix), so a single-file checkpoint loads with
`load_state_dict(strict=True)` and no renaming table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.nets.attention_kernel import attention
from core.nets.packed_weights import Conv2d, Linear, linear
from core.nets.upsample import nearest2x_conv


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320                    # channels at level 0
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # per level, times model_channels
    num_res_blocks: int = 2                      # ResBlocks per level on the way down (+1 on the way up)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)  # transformer blocks per level; 0 = no attention there
    transformer_depth_middle: int = 1             # 0 = the middle is a single ResBlock, no attention
    num_heads: tuple[int, ...] = (8, 8, 8, 8)    # attention heads per level; the middle block uses the last
    context_dim: int = 768                       # width of the text tokens cross-attention reads
    use_linear_in_transformer: bool = False      # SD2/SDXL: Linear proj_in/proj_out instead of 1x1 conv
    adm_in_channels: int | None = None           # SDXL: pooled text + size/crop embedding width (2816)
    norm_groups: int = 32
    # Two more input channels holding each latent pixel's x and y in [-1, 1] (CoordConv, Liu et al.
    # 2018). Off in every SD model. Zero padding only hints at where a pixel is, and at pure noise
    # nothing else does: a small model trained briefly cannot place "top left" without it.
    coord_channels: bool = False
    # Levels (0 = the latent's own size) whose transformer blocks only read the text: cross-attention, no
    # self-attention, no feed-forward. Off in every SD model. The built-in model puts them at its 16x16
    # level, where each word's attention then has a pixel of its own per latent pixel, at 3 % of a training
    # step; a full block there (self-attention over 256 pixels, batch 256) made a step 2-3.5 times slower.
    cross_attention_only: tuple[int, ...] = ()
    # LCM-distilled UNets (diffusers' time_cond_proj_dim): the guidance scale comes in as an embedding added
    # to the timestep's, so one call a step does what CFG does with two (`guidance_embedding`).
    time_cond_proj_dim: int | None = None

    @property
    def levels(self) -> int:
        return len(self.channel_mult)


def coordinates(x: Tensor) -> Tensor:
    """(B, 2, H, W): x then y of each pixel centre, -1 at the left/top edge to 1 at the right/bottom."""
    b, _, height, width = x.shape
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(b, 2, height, width)


def guidance_embedding(scale: Tensor, dim: int) -> Tensor:
    """LCM's embedding of the guidance scale (B,) -> (B, dim): w = scale - 1, times 1000, sin half first
    (the VDM embedding diffusers' LatentConsistencyModelPipeline uses), in float32."""
    w = (scale.float() - 1) * 1000
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=w.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = w[:, None] * freqs[None]
    return F.pad(torch.cat([torch.sin(args), torch.cos(args)], dim=1), (0, dim % 2))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) numbers, cos half first (LDM; diffusers flip_sin_to_cos=True, shift 0).

    Always computed in float32: timesteps up to 1000 and original sizes up to 4096 lose
    their low digits in half precision.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(max_period) / half))
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def sdxl_added_condition(pooled: Tensor, time_ids: Tensor, size_embed_dim: int = 256) -> Tensor:
    """SDXL's `y`: pooled text embedding, then one sinusoidal embedding per size/crop number.

    `time_ids` is (B, 6): original (h, w), crop (top, left), target (h, w), the order
    SGM's conditioner and diffusers' `add_time_ids` use.
    """
    sizes = timestep_embedding(time_ids.flatten(), size_embed_dim)  # (B*6, size_embed_dim)
    sizes = sizes.reshape(pooled.shape[0], -1)  # (B, 6*size_embed_dim)
    return torch.cat([pooled, sizes.to(pooled.dtype)], dim=-1)  # (B, adm_in_channels)


def _norm(channels: int, groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps)


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between (DDPM's residual block)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch, groups), nn.SiLU(), Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_ch, out_ch))
        # Index 2 was dropout in training; it stays as a placeholder so the conv keeps its key `out_layers.3`.
        self.out_layers = nn.Sequential(_norm(out_ch, groups), nn.SiLU(), nn.Identity(),
                                        Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]  # (B, out_ch, H, W)
        # The input comes first so the sum keeps its memory format (channels_last or not).
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: torch.Size) -> Tensor:
        # To the skip connection's size rather than a plain x2: an odd size on the way down
        # (a latent side not divisible by 2**(levels-1)) still lines up, as in diffusers.
        if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return nearest2x_conv(x, self.conv)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Attention(nn.Module):
    """Multi-head attention of x on context (context=x for self-attention)."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = Linear(dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([Linear(inner, dim)])  # LDM's (Linear, Dropout): key `to_out.0`
        # Called with (q, k) when set: attention maps read the probabilities (core/sampling/attention_probe.py).
        self.probe = None

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, T, dim_head)
        k = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, S, dim_head)
        v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, S, dim_head)
        if self.probe is not None:
            self.probe(q, k)
        out = attention(q, k, v)  # (B, heads, T, dim_head)
        return self.to_out[0](out.transpose(1, 2).flatten(2))  # (B, T, dim)


class GEGLU(nn.Module):
    """Half of the projection gates the other half through GELU (Shazeer 2020, 'GLU Variants')."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        # Two products, not one split in two: the GELU fuses into the gate's (packed_weights.linear), and
        # neither output reaches 32 MB at SD1.5's 64x64 level, where glibc would map fresh pages every call.
        half = self.proj.out_features // 2
        return linear(x, self.proj, slice(0, half)) * linear(x, self.proj, slice(half, None), gelu=True)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # Index 1 was dropout; kept so the output projection stays `net.2`.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text tokens, feed-forward; each pre-norm and residual.

    With `cross_only` the block keeps only the cross-attention (and its norm, under the same keys).
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int, cross_only: bool = False):
        super().__init__()
        self.cross_only = cross_only
        if not cross_only:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head)
        if not cross_only:
            self.norm3 = nn.LayerNorm(dim)
            self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if self.cross_only:
            return x + self.attn2(self.norm2(x), context)
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map, as tokens, wrapped in a residual."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, use_linear: bool, groups: int,
                 cross_only: bool = False):
        super().__init__()
        dim_head = channels // heads
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        # SD1 stored these projections as 1x1 convs, SD2/SDXL as Linear; same maths, different key shapes.
        proj = Linear if use_linear else lambda c_in, c_out: Conv2d(c_in, c_out, 1)
        self.proj_in = proj(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, context_dim, heads, dim_head, cross_only) for _ in range(depth))
        self.proj_out = proj(inner, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C); a view when channels_last
        # A 1x1 conv is a Linear over channels: applying both kinds on tokens keeps one layout change in and out.
        h = linear(h, self.proj_in)  # (B, HW, inner)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = linear(h, self.proj_out)  # (B, HW, C)
        return x + h.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), in x's memory format


class Block(nn.ModuleList):
    """One numbered entry of input_blocks / middle_block / output_blocks (LDM's TimestepEmbedSequential).

    Each layer takes the input it needs: ResBlocks the timestep embedding, transformers the
    text tokens, Upsample the size of the skip connection it must meet.
    """

    def forward(self, h: Tensor, emb: Tensor, context: Tensor, size: torch.Size | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, Upsample):
                h = layer(h, size)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """LDM's UNetModel: predicts noise (or v) for latents x at timesteps, given text tokens (and SDXL's y)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        c = config
        if not len(c.channel_mult) == len(c.transformer_depth) == len(c.num_heads):
            raise ValueError(f"channel_mult, transformer_depth and num_heads need one entry per level: {c}")
        self.config = c
        mc, groups = c.model_channels, c.norm_groups
        emb_ch = 4 * mc
        self.time_embed = nn.Sequential(Linear(mc, emb_ch), nn.SiLU(), Linear(emb_ch, emb_ch))
        self.time_cond_proj = None
        if c.time_cond_proj_dim is not None:   # diffusers' time_embedding.cond_proj
            self.time_cond_proj = Linear(c.time_cond_proj_dim, mc, bias=False)
        self.label_emb = None
        if c.adm_in_channels is not None:
            # SGM nests the MLP one Sequential deeper than time_embed: keys `label_emb.0.0` / `label_emb.0.2`.
            self.label_emb = nn.Sequential(
                nn.Sequential(Linear(c.adm_in_channels, emb_ch), nn.SiLU(), Linear(emb_ch, emb_ch)))

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_ch, groups)

        def attention(ch: int, level: int) -> SpatialTransformer:
            return SpatialTransformer(ch, c.num_heads[level], c.transformer_depth[level], c.context_dim,
                                      c.use_linear_in_transformer, groups, level in c.cross_attention_only)

        in_ch = c.in_channels + (2 if c.coord_channels else 0)
        self.input_blocks = nn.ModuleList([Block([Conv2d(in_ch, mc, 3, padding=1)])])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if c.transformer_depth[level]:
                    layers.append(attention(ch, level))
                self.input_blocks.append(Block(layers))
                skip_channels.append(ch)
            if level < c.levels - 1:
                self.input_blocks.append(Block([Downsample(ch)]))
                skip_channels.append(ch)

        middle = [res(ch, ch)]
        if c.transformer_depth_middle:
            middle += [SpatialTransformer(ch, c.num_heads[-1], c.transformer_depth_middle, c.context_dim,
                                          c.use_linear_in_transformer, groups), res(ch, ch)]
        # Depth 0 leaves one ResBlock, like diffusers' UNetMidBlock2D and ComfyUI's depth -1.
        self.middle_block = Block(middle)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(c.levels)):
            out_ch = c.channel_mult[level] * mc
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), out_ch)]
                ch = out_ch
                if c.transformer_depth[level]:
                    layers.append(attention(ch, level))
                if level > 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(_norm(mc, groups), nn.SiLU(), Conv2d(mc, c.out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                timestep_cond: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), timesteps (B,) or scalar, context (B, T, context_dim), y (B, adm_in_channels),
        timestep_cond (B, time_cond_proj_dim): an LCM UNet's guidance embedding.

        Computes in the parameters' dtype; the result comes back in x's dtype.
        """
        h, emb, context = self.prepare(x, timesteps, context, y, timestep_cond)
        skips = self.down(h, emb, context)
        h = self.middle_block(skips[-1], emb, context)
        h = self.up(h, skips, emb, context)
        return self.out(h).to(x.dtype)

    # The parts of forward, in order. core/sampling/deep_cache.py runs them separately to skip the deep ones.

    def prepare(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                timestep_cond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(h, emb, context): the network's input, the timestep (+ y) embedding, the text tokens, in its dtype."""
        dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps.expand(x.shape[0]), self.config.model_channels).to(dtype)  # (B, mc)
        if timestep_cond is not None:
            if self.time_cond_proj is None:
                raise ValueError("this UNet takes no guidance embedding (it has no time_cond_proj)")
            t_emb = t_emb + self.time_cond_proj(timestep_cond.to(dtype))
        emb = self.time_embed(t_emb)  # (B, 4*mc)
        if self.label_emb is not None:
            if y is None:
                raise ValueError("this UNet (SDXL) needs y, the pooled text + size embedding")
            emb = emb + self.label_emb(y.to(dtype))
        h = x.to(dtype)
        if self.config.coord_channels:
            h = torch.cat([h, coordinates(h)], dim=1)
        return h, emb, context.to(dtype)

    def down(self, h: Tensor, emb: Tensor, context: Tensor, blocks: int | None = None) -> list[Tensor]:
        """The outputs of the first `blocks` input blocks (all by default): the skip connections, shallow first."""
        skips = []
        for block in islice(self.input_blocks, blocks):
            h = block(h, emb, context)
            skips.append(h)
        return skips

    def up(self, h: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor,
           start: int = 0, stop: int | None = None) -> Tensor:
        """Output blocks start..stop-1 on h, each taking (and popping) the deepest skip left in `skips`."""
        for block in islice(self.output_blocks, start, stop):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, ch + skip_ch, H, W)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return h
