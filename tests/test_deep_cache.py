"""DeepCache (core/sampling/deep_cache.py) on tiny UNets of every layout the engine builds: the plain forward is
unchanged, full steps compute exactly what it computes, reuse steps skip the deep blocks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from core.errors import LatentDeskError
from core.nets.unet import UNet, UNetConfig, coordinates, timestep_embedding
from core.sampling.deep_cache import DeepCacheUNet
from tests.tiny_models import randomize

# Each family's distinguishing choices at toy size: attention per level, conv vs linear projections,
# SDXL's y and two-deep transformers, the built-in model's three levels with a plain first one.
CONFIGS = {
    "sd1": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 0),
                      num_heads=(2, 2), context_dim=16, norm_groups=8),
    "sd2": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                      num_heads=(1, 2), context_dim=16, use_linear_in_transformer=True, norm_groups=8),
    "sdxl": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 2),
                       num_heads=(1, 2), context_dim=16, use_linear_in_transformer=True, adm_in_channels=12,
                       norm_groups=8),
    "builtin": UNetConfig(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, transformer_depth=(0, 1, 1),
                          num_heads=(2, 2, 2), context_dim=16, adm_in_channels=8, norm_groups=8,
                          coord_channels=True),
}
STEPS = 7


def make_unet(name: str) -> UNet:
    torch.manual_seed(0)
    return randomize(UNet(CONFIGS[name]), seed=1).eval()


def inputs(unet: UNet, batch: int = 2, size: tuple[int, int] = (10, 6), seed: int = 0):
    """An odd latent size, so the upsampling on a reuse step must still meet its skip's size."""
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, *size, generator=g)
    t = torch.full((batch,), 500.0)
    context = torch.randn(batch, 5, c.context_dim, generator=g)
    y = torch.randn(batch, c.adm_in_channels, generator=g) if c.adm_in_channels else None
    return x, t, context, y


def monolithic_forward(unet: UNet, x, timesteps, context, y=None):
    """UNet.forward as it was written before it was split into prepare/down/up: the yardstick."""
    dtype = unet.time_embed[0].weight.dtype
    emb = unet.time_embed(timestep_embedding(timesteps.expand(x.shape[0]), unet.config.model_channels).to(dtype))
    if unet.label_emb is not None:
        emb = emb + unet.label_emb(y.to(dtype))
    context = context.to(dtype)
    h = x.to(dtype)
    if unet.config.coord_channels:
        h = torch.cat([h, coordinates(h)], dim=1)
    skips = []
    for block in unet.input_blocks:
        h = block(h, emb, context)
        skips.append(h)
    h = unet.middle_block(h, emb, context)
    for block in unet.output_blocks:
        h = torch.cat([h, skips.pop()], dim=1)
        h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
    return unet.out(h).to(x.dtype)


def count_blocks(unet: UNet) -> Counter:
    """Calls of every numbered block, counted by forward pre-hooks."""
    calls = Counter()
    named = [(f"in{i}", b) for i, b in enumerate(unet.input_blocks)] + [("middle", unet.middle_block)]
    named += [(f"out{i}", b) for i, b in enumerate(unet.output_blocks)]
    for name, block in named:
        block.register_forward_pre_hook(lambda module, args, name=name: calls.update([name]))
    return calls


@pytest.mark.parametrize("name", CONFIGS)
def test_the_split_forward_is_the_original_forward_bit_for_bit(name):
    unet = make_unet(name)
    with torch.no_grad():
        assert torch.equal(unet(*inputs(unet)), monolithic_forward(unet, *inputs(unet)))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("blocks", [1, 2, "all"])
def test_full_steps_are_exact_and_reuse_steps_run_only_the_shallow_blocks(name, blocks):
    unet = make_unet(name)
    n = len(unet.input_blocks)
    assert len(unet.output_blocks) == n
    blocks = n if blocks == "all" else blocks
    cached = DeepCacheUNet(unet, interval=3, blocks=blocks)
    calls = count_blocks(unet)
    shallow = {f"in{i}" for i in range(blocks)} | {f"out{i}" for i in range(n - blocks, n)}
    with torch.no_grad():
        for step in range(STEPS):
            x, t, context, y = inputs(unet, seed=step)   # a new latent every step, as sampling has
            calls.clear()
            out = cached(x, t, context, y)
            cached.end_step()
            if step % 3 == 0:
                assert torch.equal(out, unet(x, t, context, y)), step
                assert set(calls) == {f"in{i}" for i in range(n)} | {f"out{i}" for i in range(n)} | {"middle"}
            else:
                assert set(calls) == shallow, (step, sorted(calls))
                assert out.shape == x.shape and torch.isfinite(out).all()
    assert (cached.full_calls, cached.reused_calls) == (3, 4)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_reuse_step_on_the_full_steps_own_input_gives_the_same_output(name):
    """The cache holds exactly what the skipped blocks computed: nothing is lost in the hand-over."""
    unet = make_unet(name)
    cached = DeepCacheUNet(unet, interval=2, blocks=2)
    with torch.no_grad():
        full = cached(*inputs(unet))
        cached.end_step()
        reused = cached(*inputs(unet))
    assert cached.reused_calls == 1 and torch.equal(full, reused)


def test_reuse_steps_stay_close_to_exact_when_the_input_moves_a_little():
    unet = make_unet("sd1")
    cached = DeepCacheUNet(unet, interval=4, blocks=1)
    x, t, context, y = inputs(unet)
    with torch.no_grad():
        cached(x, t, context, y)
        cached.end_step()
        nudged = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        reused, exact = cached(nudged, t, context, y), unet(nudged, t, context, y)
    assert cached.reused_calls == 1
    assert 0 < (reused - exact).abs().max() / exact.abs().max() < 0.05


def test_a_new_batch_shape_runs_in_full_and_refreshes_the_cache():
    """2B rows (guided) → B rows (unguided): the cache's rows belong to the other layout."""
    unet = make_unet("sd2")
    cached = DeepCacheUNet(unet, interval=10, blocks=1)
    calls = count_blocks(unet)
    kinds = []
    with torch.no_grad():
        for step, batch in enumerate((2, 1, 1, 2)):
            calls.clear()
            x, t, context, y = inputs(unet, batch=batch, seed=step)
            out = cached(x, t, context, y)
            cached.end_step()
            kinds.append("full" if calls["middle"] else "reuse")
            if calls["middle"]:
                assert torch.equal(out, unet(x, t, context, y))
    assert kinds == ["full", "full", "reuse", "full"]


def test_two_calls_a_step_share_the_steps_decision():
    """Heun's second call in a step runs in full on a full step and reuses on a reuse step."""
    unet = make_unet("sd1")
    cached = DeepCacheUNet(unet, interval=2, blocks=1)
    kinds = []
    with torch.no_grad():
        for step in range(4):
            for call in range(2):
                before = cached.full_calls
                cached(*inputs(unet, seed=10 * step + call))
                kinds.append("full" if cached.full_calls > before else "reuse")
            cached.end_step()
    assert kinds == ["full", "full", "reuse", "reuse"] * 2


def test_the_first_steps_run_in_full_then_one_in_interval():
    unet = make_unet("sd1")
    cached = DeepCacheUNet(unet, interval=3, blocks=1, full_first=2)
    kinds = []
    with torch.no_grad():
        for step in range(8):
            before = cached.full_calls
            cached(*inputs(unet, seed=step))
            cached.end_step()
            kinds.append("F" if cached.full_calls > before else "r")
    assert "".join(kinds) == "FFrrFrrF"


def test_without_step_boundaries_every_call_runs_in_full():
    unet = make_unet("sd1")
    cached = DeepCacheUNet(unet, interval=3, blocks=1)
    with torch.no_grad():
        for seed in range(3):
            cached(*inputs(unet, seed=seed))
    assert (cached.full_calls, cached.reused_calls) == (3, 0)


@pytest.mark.parametrize("blocks", [0, 6])
def test_more_blocks_than_the_unet_has_is_a_clear_error(blocks):
    unet = make_unet("sd1")   # conv_in, level 0, downsample, level 1: 4 input blocks
    with pytest.raises(LatentDeskError, match="has 4 input blocks"):
        DeepCacheUNet(unet, interval=3, blocks=blocks)
