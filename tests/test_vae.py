"""AutoencoderKL: numerical parity with diffusers (test-only oracle) through both
weight routes, config recovery from shapes, the posterior, and the latent scale."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import LatentDeskError
from core.loading.convert_vae import (
    fix_attention_shapes,
    vae_config_from_diffusers,
    vae_config_from_shapes,
    vae_state_from_diffusers,
)
from core.nets.vae import AutoencoderKL, DiagonalGaussian, VAEConfig

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

# Two levels with a channel change (nin_shortcut) and 32 groups; three levels with
# equal top widths, two blocks and small groups, so the decoder's reversed level
# numbering and the per-level block counts are both exercised.
TINY = [
    VAEConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, norm_groups=32, scale_factor=0.5),
    VAEConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, norm_groups=8, scale_factor=0.13025),
]


def diffusers_config(c: VAEConfig) -> dict:
    """The diffusers config.json that describes the same VAE, written out by hand."""
    n = len(c.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [c.base_channels * m for m in c.channel_mult],
        "layers_per_block": c.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": c.z_channels,
        "norm_num_groups": c.norm_groups,
        "sample_size": 32,
        "scaling_factor": c.scale_factor,
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Normal weights everywhere (norm scales and biases too), so no zero init hides a wiring bug.

    Weights get std 1/sqrt(fan_in) to keep activations O(1) through the stack.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def compare(ours: AutoencoderKL, ref, c: VAEConfig, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, c.in_channels, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, c.z_channels, 32 // c.downsample_factor, 32 // c.downsample_factor, generator=g)
    with torch.no_grad():
        post, ref_post = ours.encode(x), ref.encode(x).latent_dist
        diffs = {
            "mean": rel_diff(post.mean, ref_post.mean),
            "std": rel_diff(post.std, ref_post.std),
            "decode": rel_diff(ours.decode(z), ref.decode(z).sample),
        }
    assert all(d <= 1e-4 for d in diffs.values()), diffs
    # The outputs must be non-trivial for the parity to mean anything.
    assert post.mean.std() > 0.1 and post.std.std() > 0.01
    return diffs


@pytest.mark.parametrize("c", TINY)
def test_diffusers_folder_route_matches_diffusers(c):
    ref = randomize(diffusers.AutoencoderKL(**diffusers_config(c)), seed=1)
    config = vae_config_from_diffusers(diffusers_config(c))
    assert config == c
    ours = AutoencoderKL(config).eval()
    ours.load_state_dict(vae_state_from_diffusers(ref.state_dict(), config), strict=True)
    compare(ours, ref, c, seed=2)


@pytest.mark.parametrize("c", TINY)
def test_single_file_route_matches_diffusers_converter(c):
    ours = randomize(AutoencoderKL(c), seed=3)
    checkpoint = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref = diffusers.AutoencoderKL(**diffusers_config(c)).eval()
    ref.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, diffusers_config(c)), strict=True)
    compare(ours, ref, c, seed=4)


def test_legacy_diffusers_attention_names_convert_alike():
    c = TINY[0]
    sd = diffusers.AutoencoderKL(**diffusers_config(c)).state_dict()
    old = {"group_norm": "group_norm", "to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in sd.items():
        for new_name, old_name in old.items():
            k = k.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    a, b = vae_state_from_diffusers(sd, c), vae_state_from_diffusers(legacy, c)
    assert a.keys() == b.keys() and all(a[k] is b[k] or torch.equal(a[k], b[k]) for k in a)
    assert a["decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # A view, not a copy: a 4 GB checkpoint shouldn't be duplicated on import.
    assert a["decoder.mid.attn_1.q.weight"].data_ptr() == sd["decoder.mid_block.attentions.0.to_q.weight"].data_ptr()


@pytest.mark.parametrize("c", TINY)
def test_config_from_shapes_recovers_config(c):
    sd = AutoencoderKL(c).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert vae_config_from_shapes(shapes, c.scale_factor, norm_groups=c.norm_groups) == c
    # Linear-shaped attention weights and leftover training-loss keys are tolerated.
    shapes = {k: s[:2] if ".attn_1." in k and k.endswith(".weight") and len(s) == 4 else s for k, s in shapes.items()}
    shapes["loss.logvar"] = ()
    assert vae_config_from_shapes(shapes, c.scale_factor, norm_groups=c.norm_groups) == c


def test_config_from_shapes_of_full_size_sd_vae():
    """SD1/SD2/SDXL all share this architecture: 248 weights, (1, 2, 4, 4) x 128 channels."""
    sd = VAEConfig()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(sd).state_dict().items()}
    assert len(shapes) == 248
    assert vae_config_from_shapes(shapes, 0.13025) == VAEConfig(scale_factor=0.13025)


def test_fix_attention_shapes_lets_linear_attention_load_strictly():
    c = TINY[0]
    src = randomize(AutoencoderKL(c), seed=5).state_dict()
    flat = {k: v[:, :, 0, 0] if ".attn_1." in k and v.ndim == 4 else v for k, v in src.items()}
    assert flat["encoder.mid.attn_1.proj_out.weight"].ndim == 2
    ours = AutoencoderKL(c)
    ours.load_state_dict(fix_attention_shapes(flat), strict=True)
    assert all(torch.equal(v, src[k]) for k, v in ours.state_dict().items())


def test_posterior_sample_is_seeded_and_distributed_right():
    mean = torch.full((1, 4, 64, 64), 3.0)
    logvar = torch.full((1, 4, 64, 64), math.log(4.0))                 # std 2
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, post.sample(torch.Generator().manual_seed(8)))
    # Exactly mean + std * the CPU generator's normal draws: the noise contract that
    # makes a seed give the same image on every device.
    expected = 3.0 + 2.0 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, expected)
    eps = (a - 3.0) / 2.0                                               # 16384 draws
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1.0) < 0.05
    assert torch.equal(post.mode(), mean)


def test_posterior_clamps_logvar_like_the_original():
    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.tensor([-100.0, 100.0]).repeat(8).view(1, 4, 2, 2)], 1)
    post = DiagonalGaussian(moments)
    assert post.logvar.min() == -30.0 and post.logvar.max() == 20.0
    assert torch.isfinite(post.std).all() and (post.std > 0).all()


def test_scale_factor_applied_to_latents():
    c = TINY[0]                                                         # scale_factor 0.5
    vae = randomize(AutoencoderKL(c), seed=9)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(10)) * 2 - 1
    latents = vae.encode_latents(x, sample=False)
    assert not latents.requires_grad
    with torch.no_grad():
        mean = vae.encode(x).mean
        assert torch.allclose(latents, mean * 0.5)
        assert torch.allclose(vae.decode_latents(latents), vae.decode(mean), atol=1e-5)
    sampled = vae.encode_latents(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(sampled, vae.encode_latents(x, generator=torch.Generator().manual_seed(11)))
    assert not torch.allclose(sampled, latents)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"use_quant_conv": False}, "use_quant_conv"),
        ({"shift_factor": 0.1159}, "shift_factor"),
        ({"mid_block_add_attention": False}, "mid_block_add_attention"),
        ({"latents_mean": [0.0] * 4}, "latents_mean"),
        ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]}, "AttnDownEncoderBlock2D"),
        ({"_class_name": "AutoencoderTiny"}, "AutoencoderTiny"),
        ({"block_out_channels": [32, 48]}, "multiples"),
        ({"norm_num_groups": 24}, "norm groups"),
    ],
)
def test_unsupported_diffusers_configs_are_refused(change, words):
    with pytest.raises(LatentDeskError, match=words):
        vae_config_from_diffusers(diffusers_config(TINY[0]) | change)


def test_unmappable_or_missing_diffusers_keys_are_named():
    c = TINY[0]
    sd = dict(diffusers.AutoencoderKL(**diffusers_config(c)).state_dict())
    with pytest.raises(LatentDeskError, match=r"encoder\.mystery\.weight"):
        vae_state_from_diffusers(sd | {"encoder.mystery.weight": torch.zeros(1)}, c)
    del sd["decoder.up_blocks.0.upsamplers.0.conv.bias"]               # up.1 in our numbering
    with pytest.raises(LatentDeskError, match=r"missing: decoder\.up\.1\.upsample\.conv\.bias"):
        vae_state_from_diffusers(sd, c)


def test_shapes_that_are_no_sd_vae_are_refused():
    c = TINY[0]
    shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(c).state_dict().items()}
    no_quant = {k: s for k, s in shapes.items() if not k.startswith("quant_conv.")}  # SD3/Flux-style
    with pytest.raises(LatentDeskError, match=r"missing: quant_conv\.bias, quant_conv\.weight"):
        vae_config_from_shapes(no_quant, 0.5)
    with pytest.raises(LatentDeskError, match="lack"):
        vae_config_from_shapes({"model.diffusion_model.x": (1,)}, 0.5)
    extra_block = shapes | {"decoder.up.0.block.9.conv1.weight": (32, 32, 3, 3)}
    with pytest.raises(LatentDeskError, match=r"unexpected: decoder\.up\.0\.block\.9"):
        vae_config_from_shapes(extra_block, 0.5)


def test_sliced_attention_matches_one_call(monkeypatch):
    """Above 4096 pixels (images over 512x512) attention runs in query slices; same result."""
    import core.nets.vae

    block = randomize(core.nets.vae.AttnBlock(32, 8), seed=12)
    x = torch.randn(2, 32, 6, 7, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        whole = block(x)
        monkeypatch.setattr(core.nets.vae, "_QUERY_SLICE", 10)               # 42 pixels -> slices of 10, ..., 2
        sliced = block(x)
    assert rel_diff(sliced, whole) < 1e-6 and rel_diff(whole, x) > 1e-3
