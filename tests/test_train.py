"""Two-stage training (core/train): tiny networks, a handful of steps each.

Losses fall on a fixed batch, the scale factor is 1/std, caption dropout happens at its
rate, EMA follows its formula, a resumed run is bit-identical to an uninterrupted one,
checkpoints hold no pickle, the export loads through the ordinary loader, DDP on two
CPU processes matches one process, and captioned folders read as documented.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from core.errors import LatentDeskError
from core.families import EOS_ID, UNET_PREFIX, VAE_PREFIX
from core.nets.unet import UNetConfig
from core.nets.vae import VAEConfig
from core.train import loop as loop_module
from core.train.autoencoder import (
    AutoencoderLoss,
    AutoencoderStage,
    build_autoencoder,
    latent_scale_factor,
    load_autoencoder,
    psnr,
    write_autoencoder,
)
from core.train.data import BatchOrder, BatchRandom, CaptionedFolder
from core.train.diffusion import (
    DiffusionStage,
    LatentCache,
    NoiseTarget,
    TextEncoderConfig,
    build_latent_cache,
    build_networks,
)
from core.train.distributed import Distributed
from core.train.ema import EMA
from core.train.export import TEXT_PREFIX, ModelDefaults, export_model
from core.train.loop import attention_for_training, train
from core.train.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
VAE = VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4, scale_factor=1.0)
UNET = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                  num_heads=(2, 2), context_dim=32, norm_groups=8)
TEXT = TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
ONE = Distributed()   # a single process, CPU, without touching the thread count


class Pictures(torch.utils.data.Dataset):
    """n fixed 64x64 images (a bright square on a dark ground) with captions."""

    def __init__(self, n: int = 4, size: int = 64):
        g = torch.Generator().manual_seed(1)
        self.items = []
        for i in range(n):
            image = torch.full((3, size, size), -0.8)
            top, left = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
            image[i % 3, top:top + size // 3, left:left + size // 3] = 0.9
            self.items.append((image, f"a square number {i}"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "loss.jsonl").read_text().splitlines()]


def settings(**changes) -> TrainSettings:
    return replace(TrainSettings(steps=4, batch_size=2, lr=1e-3, seed=3, log_every=1, checkpoint_every=100), **changes)


def tiny_cache(n: int = 4, side: int = 4) -> LatentCache:
    """n cached posteriors of side x side latents, with captions."""
    from core.text.tokenizer import ClipTokenizer
    g = torch.Generator().manual_seed(2)
    tokenizer = ClipTokenizer()
    ids = torch.tensor([[tokenizer(f"a red circle {i}", EOS_ID)] for i in range(n)])   # (n, 1, 77)
    return LatentCache(torch.randn(n, 4, side, side, generator=g), torch.full((n, 4, side, side), -6.0), ids, 0.5)


def diffusion_stage(**changes) -> DiffusionStage:
    args = dict(cache=tiny_cache(), unet_config=UNET, text_config=TEXT, data_name="tiny", autoencoder="none",
                caption_dropout=0.2, seed=0) | changes
    return DiffusionStage(**args)


# --- stage 1 -------------------------------------------------------------------------------------

def test_autoencoder_loss_decreases_on_a_fixed_batch(tmp_path):
    stage = AutoencoderStage(VAE, Pictures(2, size=32), "pictures", AutoencoderLoss(kl_weight=1e-6))
    train(stage, settings(steps=12, lr=3e-3), tmp_path, ONE, io.StringIO())
    values = losses(tmp_path)
    assert sum(values[-3:]) < 0.5 * sum(values[:3])


def test_autoencoder_trains_on_random_crops(tmp_path):
    stage = AutoencoderStage(VAE, Pictures(2), "pictures", AutoencoderLoss(crop=32))
    inputs = stage.inputs([0, 1], BatchRandom(0, 0, 2, slice(0, 2)))
    assert inputs["images"].shape == (2, 3, 32, 32) and inputs["noise"].shape == (2, 4, 4, 4)


def test_scale_factor_is_one_over_the_std_of_posterior_samples():
    vae = build_autoencoder(VAE, seed=0).eval()
    data = Pictures(3, size=32)
    factor = latent_scale_factor(vae, data, n=3, seed=5, batch_size=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z = torch.cat([vae.encode(torch.stack([data[0][0], data[1][0]])).sample(g),
                       vae.encode(data[2][0][None]).sample(g)])
    assert factor == pytest.approx(1 / z.std().item(), rel=1e-6)


def test_psnr_of_an_untrained_autoencoder_is_low():
    vae = build_autoencoder(VAE, seed=0).eval()
    assert psnr(vae, Pictures(2, size=32), n=2) < 15   # an untrained decoder gives roughly grey noise


def test_autoencoder_file_round_trip(tmp_path):
    vae = build_autoencoder(replace(VAE, scale_factor=0.37), seed=1)
    write_autoencoder(tmp_path / "ae.safetensors", vae)
    back = load_autoencoder(tmp_path / "ae.safetensors")
    assert back.config == vae.config
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), back.state_dict().values(), strict=True))
    with pytest.raises(LatentDeskError, match="no trained autoencoder"):
        load_autoencoder(tmp_path / "missing")


def test_autoencoder_latents_are_an_eighth_the_size_with_up_to_16_channels():
    for config in (replace(VAE, channel_mult=(1, 1)), replace(VAE, z_channels=0), replace(VAE, z_channels=17)):
        with pytest.raises(LatentDeskError, match="1/8 the image size with 1 to 16 channels"):
            AutoencoderStage(config, Pictures(1), "pictures")
    stage = AutoencoderStage(replace(VAE, z_channels=16), Pictures(2), "pictures")
    assert stage.objective.vae.encode(torch.zeros(1, 3, 32, 32)).mode().shape[1] == 16


# --- stage 2 -------------------------------------------------------------------------------------

def test_diffusion_loss_decreases_on_a_fixed_batch(tmp_path):
    stage = diffusion_stage(cache=tiny_cache(2), caption_dropout=0.0)
    train(stage, settings(steps=30, lr=4e-3, batch_size=8), tmp_path, ONE, io.StringIO())   # 2 items, 4 draws each
    values = losses(tmp_path)
    assert values[0] == pytest.approx(1.0, abs=0.2)   # the zero-initialised output predicts eps = 0
    assert sum(values[-5:]) < 0.6 * sum(values[:5])


def test_v_objective_on_the_zero_terminal_snr_schedule():
    """Loss = ||v_theta - (sqrt(abar) eps - sqrt(1 - abar) x0)||^2, and at t = 999 x_t holds no image."""
    from core.sampling.schedules import ZERO_SNR_SCHEDULE

    stage = diffusion_stage(target=NoiseTarget("v", zero_terminal_snr=True))
    objective = stage.objective
    seen = {}
    forward = objective.unet.forward
    objective.unet.forward = lambda x, t, context, y=None: seen.setdefault("x", x) * 0 + 0.5
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    ids = stage.cache.ids[:3, 0]
    t = torch.tensor([0, 500, 999])
    loss = objective(latents, t, noise, ids)["loss"]
    objective.unet.forward = forward
    abar = ZERO_SNR_SCHEDULE.alphas_cumprod[t][:, None, None, None]
    v = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    assert loss.item() == pytest.approx(((0.5 - v) ** 2).mean().item(), rel=1e-6)
    assert torch.allclose(seen["x"][2], noise[2], atol=1e-3)   # pure noise at the last timestep
    assert torch.allclose(v[2], -latents[2], atol=1e-3)        # so the target there is the image itself
    assert stage.description()["target"] == {"prediction": "v", "zero_terminal_snr": True, "snr_weight_range": None,
                                             "offset_noise": 0.0, "pyramid_noise": 0.0}


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(LatentDeskError, match="needs v-prediction"):
        NoiseTarget("epsilon", zero_terminal_snr=True)
    with pytest.raises(LatentDeskError, match="prediction must be one of"):
        NoiseTarget("x0")


def test_caption_dropout_rate_and_what_is_dropped():
    stage = diffusion_stage(caption_dropout=0.25)
    batch = 2000
    inputs = stage.inputs([i % 4 for i in range(batch)], BatchRandom(0, 0, batch, slice(0, batch)))
    dropped = (inputs["ids"] == stage.empty_ids).all(dim=1)
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    kept = ~dropped
    assert torch.equal(inputs["ids"][kept], stage.cache.ids[torch.tensor([i % 4 for i in range(batch)]), 0][kept])
    assert stage.empty_ids[0] == 49406 and (stage.empty_ids[1:] == EOS_ID).all()   # BOS, then EOS padding


def test_diffusion_inputs_follow_the_schedule_ranges():
    stage = diffusion_stage()
    inputs = stage.inputs(list(range(4)) * 64, BatchRandom(0, 0, 256, slice(0, 256)))
    t = inputs["timesteps"]
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 100
    # x_0 is the scaled posterior sample: near mean * scale, as the log-variance is tiny here
    expected = stage.cache.mean[torch.arange(4).repeat(64)] * stage.cache.scale_factor
    assert torch.allclose(inputs["latents"], expected, atol=0.3)


def test_shapes_scenes_keep_several_phrasings_and_the_trainer_draws_among_them():
    from core.shapes.dataset import ShapesDataset
    from core.text.tokenizer import ClipTokenizer
    data = ShapesDataset(0, 6, empty_prob=0.0, captions_per_item=4)
    captions = data.captions(2)
    assert len(captions) == 4 and captions[0] == data[2].caption and len(set(captions)) > 1
    assert captions == data.captions(2)                                  # a pure function of the item
    assert ShapesDataset(0, 6, captions_per_item=1).captions(2) == [ShapesDataset(0, 6)[2].caption]
    with pytest.raises(ValueError, match="captions_per_item"):
        ShapesDataset(0, 6, captions_per_item=0)

    tokenizer = ClipTokenizer()
    cache = tiny_cache()
    phrasings = [[tokenizer(f"a red circle {i} take {k}", EOS_ID) for k in range(3)] for i in range(4)]
    cache = LatentCache(cache.mean, cache.logvar, torch.tensor(phrasings), cache.scale_factor)
    stage = diffusion_stage(cache=cache, caption_dropout=0.0)
    rows = [1] * 300
    ids = stage.inputs(rows, BatchRandom(0, 0, 300, slice(0, 300)))["ids"]
    picked = [next(k for k in range(3) if torch.equal(row, cache.ids[1, k])) for row in ids]
    assert all(abs(picked.count(k) / 300 - 1 / 3) < 0.08 for k in range(3))
    # the same step draws the same phrasings again (resumable)
    assert torch.equal(ids, stage.inputs(rows, BatchRandom(0, 0, 300, slice(0, 300)))["ids"])


def test_latent_cache_of_several_phrasings_round_trips_and_reads_old_files(tmp_path):
    from safetensors.torch import save_file
    cache = tiny_cache()
    wide = LatentCache(cache.mean, cache.logvar, cache.ids.repeat(1, 2, 1), cache.scale_factor)
    wide.save(tmp_path / "wide.safetensors", "f")
    assert torch.equal(LatentCache.load(tmp_path / "wide.safetensors", "f").ids, wide.ids)
    # a cache written before items had several captions holds ids of shape (N, 77)
    save_file({"mean": cache.mean, "logvar": cache.logvar, "ids": cache.ids[:, 0].contiguous()},
              str(tmp_path / "old.safetensors"), {"fingerprint": "f", "scale_factor": "0.5"})
    assert torch.equal(LatentCache.load(tmp_path / "old.safetensors", "f").ids, cache.ids)


def test_latent_cache_encodes_each_item_once():
    vae = build_autoencoder(VAE, seed=0).eval()
    data = Pictures(3, size=32)
    cache = build_latent_cache(vae, data, batch_size=2, stream=io.StringIO())
    assert cache.mean.shape == (3, 4, 4, 4) and cache.ids.shape == (3, 1, 77) and cache.scale_factor == 1.0
    with torch.no_grad():
        assert torch.allclose(cache.mean[2], vae.encode(data[2][0][None]).mean[0], atol=1e-5)


# --- the loop ------------------------------------------------------------------------------------

def test_ema_update_follows_the_formula_with_warm_up():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 0)                     # warm-up: min(0.9, 1/10) = 0.1
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9
    assert torch.allclose(ema.shadow["weight"], 0.1 * start["weight"] + 0.9 * net.weight)
    before = ema.shadow["weight"].clone()
    ema.update(net, 100)                   # past the warm-up: the plain decay
    assert torch.allclose(ema.shadow["weight"], 0.9 * before + 0.1 * net.weight)
    ema.copy_to(net)
    assert torch.equal(net.weight, ema.shadow["weight"])


def test_batch_order_is_a_permutation_per_epoch_and_processes_split_the_batch():
    order = BatchOrder(10, 4, seed=1)
    seen = [i for step in range(5) for i in order.indices(step)]     # 20 positions = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]
    assert BatchOrder(10, 4, seed=1).indices(3) == order.indices(3)
    halves = [Distributed(rank, 2).rows(4) for rank in (0, 1)]
    assert order.indices(2)[halves[0]] + order.indices(2)[halves[1]] == order.indices(2)
    with pytest.raises(LatentDeskError, match="does not split evenly"):
        Distributed(0, 3).rows(4)


def test_resume_is_bit_identical_and_checkpoints_hold_no_pickle(tmp_path):
    run = settings(steps=6, warmup_steps=2, lr_decay_until=6, ema_decay=0.9, checkpoint_every=3)
    train(diffusion_stage(), run, tmp_path / "straight", ONE, io.StringIO())
    train(diffusion_stage(), replace(run, steps=3), tmp_path / "resumed", ONE, io.StringIO())
    assert json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())["step"] == 3
    train(diffusion_stage(), run, tmp_path / "resumed", ONE, io.StringIO())

    tensors = {}
    for name in ("straight", "resumed"):
        files = sorted(p.name for p in (tmp_path / name / "checkpoint").iterdir())
        assert files == ["state-00000006.safetensors", "state.json"]   # the step-3 tensors were replaced
        meta = json.loads((tmp_path / name / "checkpoint/state.json").read_text())   # JSON, not pickle
        assert meta["step"] == 6 and meta["samples_seen"] == 12
        tensors[name] = load_file(tmp_path / name / "checkpoint" / meta["tensors"])     # safetensors, not pickle
    a, b = tensors["straight"], tensors["resumed"]
    assert a.keys() == b.keys()
    assert {k.split(".")[0] for k in a} == {"model", "ema", "optim", "rng"}
    assert all(torch.equal(a[k], b[k]) for k in a if k != "rng.torch"), "resumed weights differ"
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def test_resume_reads_checkpoints_written_before_lr_scales(tmp_path):
    run = settings(steps=4, warmup_steps=1, lr_decay_until=4, checkpoint_every=2)
    train(diffusion_stage(), replace(run, steps=2), tmp_path, ONE, io.StringIO())
    state = tmp_path / "checkpoint/state.json"
    meta = json.loads(state.read_text())
    for group in meta["optimizer"]["param_groups"]:
        del group["lr_scale"]          # what a checkpoint of an earlier version holds
    state.write_text(json.dumps(meta))
    trained = train(diffusion_stage(), run, tmp_path, ONE, io.StringIO())
    assert trained.step == 4


def test_resume_reads_checkpoints_written_before_a_new_optional_unet_field(tmp_path):
    run = settings(steps=4, warmup_steps=1, lr_decay_until=4, checkpoint_every=2)
    train(diffusion_stage(), replace(run, steps=2), tmp_path, ONE, io.StringIO())
    state = tmp_path / "checkpoint/state.json"
    meta = json.loads(state.read_text())
    assert meta["description"]["unet"]["time_cond_proj_dim"] is None
    del meta["description"]["unet"]["time_cond_proj_dim"]     # written before UNetConfig had the field
    state.write_text(json.dumps(meta))
    assert train(diffusion_stage(), run, tmp_path, ONE, io.StringIO()).step == 4
    meta = json.loads(state.read_text())
    meta["description"]["unet"]["time_cond_proj_dim"] = 8     # a real difference is still refused
    state.write_text(json.dumps(meta))
    with pytest.raises(LatentDeskError, match="different unet"):
        train(diffusion_stage(), replace(run, steps=6), tmp_path, ONE, io.StringIO())


def test_resume_refuses_a_different_run(tmp_path):
    train(diffusion_stage(), settings(steps=1), tmp_path, ONE, io.StringIO())
    with pytest.raises(LatentDeskError, match="seed 3 there, 4 now"):
        train(diffusion_stage(), settings(steps=2, seed=4), tmp_path, ONE, io.StringIO())
    with pytest.raises(LatentDeskError, match="different caption_dropout"):
        train(diffusion_stage(caption_dropout=0.5), settings(steps=2), tmp_path, ONE, io.StringIO())


def test_the_text_encoder_can_learn_at_its_own_rate(tmp_path):
    assert len(diffusion_stage().param_groups()) == 1   # the optimizer layout of runs made before the scale
    stage = diffusion_stage(text_lr_scale=10.0)
    unet_group, text_group = stage.param_groups()
    assert len(text_group["params"]) == len(list(stage.objective.text_model.parameters()))
    assert len(unet_group["params"]) + len(text_group["params"]) == len(list(stage.objective.parameters()))
    train(stage, settings(steps=2, lr=1e-3), tmp_path, ONE, io.StringIO())
    groups = json.loads((tmp_path / "checkpoint/state.json").read_text())["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    with pytest.raises(LatentDeskError, match="text_lr_scale"):
        train(diffusion_stage(), settings(steps=3, lr=1e-3), tmp_path, ONE, io.StringIO())
    with pytest.raises(LatentDeskError, match="learning-rate scale"):
        diffusion_stage(text_lr_scale=0.0)


def test_progress_reports_rate_and_eta(tmp_path):
    stream = io.StringIO()
    train(diffusion_stage(), settings(steps=2), tmp_path, ONE, stream)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("diffusion step 2/2") and "it/s" in last and "ETA 0:00:00" in last


def test_training_and_the_command_line_show_the_same_pace_each_in_its_own_format():
    from app.cli.progress import ProgressBar
    from core.train.progress import Progress

    stream = io.StringIO()
    line = Progress("diffusion", 10, 2, stream)          # resumed at step 2: only this run's steps count
    line.started -= 4.0                                 # 4 steps in 4 s, 4 to go
    line.update(6, {"loss": 0.5})
    assert stream.getvalue() == "diffusion step 6/10  loss 0.5  1.00 it/s  ETA 0:00:04\n"

    stream = io.StringIO()
    bar = ProgressBar(2, stream, width=4)               # 2 images of 4 steps: 8 steps in all
    bar.started -= 2.0
    bar.update(0, 0, 4)
    assert stream.getvalue() == "\rimage 1/2 [#...] 1/4 0.50 it/s ETA 0:14 "


def test_learning_rate_warms_up_then_decays_by_the_step_alone():
    run = TrainSettings(steps=100, lr=1.0, warmup_steps=10, lr_decay_until=110, lr_floor=0.1)
    assert [run.lr_at(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert run.lr_at(60) == pytest.approx(0.55) and run.lr_at(110) == run.lr_at(500) == pytest.approx(0.1)
    assert TrainSettings(lr=0.5).lr_at(10**6) == 0.5


def test_bad_settings_are_refused():
    with pytest.raises(LatentDeskError, match="steps must be"):
        TrainSettings(steps=0)
    with pytest.raises(LatentDeskError, match="learning rate"):
        TrainSettings(lr=0.0)


# --- export --------------------------------------------------------------------------------------

def test_export_round_trip_keys_metadata_dtype_and_loader(tmp_path):
    from core.loading.checkpoint import load_model

    stage = diffusion_stage()
    vae = build_autoencoder(replace(VAE, scale_factor=0.25), seed=0)
    path = export_model(tmp_path / "m.safetensors", stage.objective.unet, vae, stage.objective.text_model,
                        ModelDefaults(size=64, guidance=3.5, sampler="Euler"), dtype="fp16")
    with safe_open(path, framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys}
        token = f.get_tensor(TEXT_PREFIX + "embeddings.token_embedding.weight")
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert sum(k.startswith(UNET_PREFIX) for k in keys) == len(stage.objective.unet.state_dict())
    assert sum(k.startswith(VAE_PREFIX) for k in keys) == len(vae.state_dict())
    assert token.shape == (49408, 32) and dtypes == {torch.float16}
    trained = stage.objective.text_model.state_dict()
    assert torch.equal(token, next(v for k, v in trained.items() if k.endswith("token_embedding.weight")).half())
    assert metadata["modelspec.prediction_type"] == "epsilon"
    config = json.loads(metadata["latentdesk.config"])
    assert config["format"] == 1 and config["family"] == "sd1"
    assert config["vae"]["scale_factor"] == 0.25 and config["unet"]["num_heads"] == [2, 2]
    assert config["text_encoder"] == {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "max_position_embeddings": 77,
                                      "hidden_act": "quick_gelu", "vocab_size": 49408}
    assert (config["default_size"], config["default_steps"], config["default_guidance"],
            config["default_sampler"]) == (64, 20, 3.5, "Euler")

    model = load_model(path)
    assert model.unet.config == UNET and model.vae.config.scale_factor == 0.25
    assert model.prediction == "epsilon" and model.family.default_guidance == 3.5
    with torch.no_grad():
        ids = stage.cache.ids[:1, 0]
        ours = stage.objective.text_encoder([ids])[0]
        theirs = model.text_encoder([ids])[0]
    assert torch.allclose(ours, theirs, atol=2e-2)   # the same conditioning, up to fp16 weights


def test_export_states_v_prediction_and_the_schedule_and_the_loader_uses_them(tmp_path):
    from core.loading.checkpoint import load_model
    from core.sampling.schedules import ZERO_SNR_SCHEDULE, schedule_for

    stage = diffusion_stage()
    vae = build_autoencoder(replace(VAE, scale_factor=0.25), seed=0)
    path = export_model(tmp_path / "v.safetensors", stage.objective.unet, vae, stage.objective.text_model,
                        ModelDefaults(size=64), prediction="v", zero_terminal_snr=True)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.prediction_type"] == "v"
    assert json.loads(metadata["latentdesk.config"])["zero_terminal_snr"] is True
    model = load_model(path)
    assert model.prediction == "v" and model.family.zero_terminal_snr
    assert schedule_for(model.family.zero_terminal_snr) is ZERO_SNR_SCHEDULE
    assert not load_model(export_model(tmp_path / "e.safetensors", stage.objective.unet, vae,
                                       stage.objective.text_model)).family.zero_terminal_snr


def test_export_keeps_the_coordinate_channels(tmp_path):
    from core.loading.checkpoint import load_model

    unet_config = replace(UNET, coord_channels=True)
    stage = diffusion_stage(unet_config=unet_config)
    vae = build_autoencoder(replace(VAE, scale_factor=0.25), seed=0)
    path = export_model(tmp_path / "c.safetensors", stage.objective.unet, vae, stage.objective.text_model,
                        ModelDefaults(size=64))
    model = load_model(path)
    assert model.unet.config == unet_config
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    context = torch.randn(1, 77, UNET.context_dim)
    with torch.no_grad():
        assert torch.allclose(model.unet(x, t, context), stage.objective.unet(x, t, context), atol=2e-2)


def test_cross_attention_only_levels_read_the_text_alone_and_survive_export(tmp_path):
    from core.loading.checkpoint import load_model
    from core.nets.unet import TransformerBlock

    unet_config = replace(UNET, transformer_depth=(1, 1), cross_attention_only=(0,))
    stage = diffusion_stage(unet_config=unet_config)
    unet = stage.objective.unet
    blocks = [m for m in unet.modules() if isinstance(m, TransformerBlock)]
    top = [b for b in blocks if b.attn2.to_q.in_features == UNET.model_channels]
    assert top and all(b.cross_only and not hasattr(b, "attn1") and not hasattr(b, "ff") for b in top)
    assert all(hasattr(b, "attn1") and hasattr(b, "ff") for b in blocks if b not in top)
    # A block without self-attention treats each pixel alone: with the other levels' blocks taken out,
    # swapping two pixels of its input swaps its output.
    block, tokens = top[0], torch.randn(1, 5, UNET.model_channels)
    context = torch.randn(1, 77, UNET.context_dim)
    with torch.no_grad():
        out, swapped = block(tokens, context), block(tokens[:, [1, 0, 2, 3, 4]], context)
        assert torch.allclose(swapped, out[:, [1, 0, 2, 3, 4]], atol=1e-6)
        assert not torch.allclose(block(tokens, torch.randn_like(context)), out)   # and it reads the text

    vae = build_autoencoder(replace(VAE, scale_factor=0.25), seed=0)
    model = load_model(export_model(tmp_path / "x.safetensors", unet, vae, stage.objective.text_model,
                                    ModelDefaults(size=64)))
    assert model.unet.config == unet_config
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    with torch.no_grad():
        assert torch.allclose(model.unet(x, t, context), unet(x, t, context), atol=2e-2)


def test_pooled_text_condition_trains_exports_and_samples_as_one_path(tmp_path):
    """A UNet with y = the caption's pooled embedding: what training feeds it is what generation feeds it."""
    from core.generate import conditioning
    from core.loading.checkpoint import load_model
    from core.request import GenerationRequest
    from core.text.prompts import encode_prompt

    unet_config = replace(UNET, adm_in_channels=TEXT.hidden_size)
    stage = diffusion_stage(unet_config=unet_config)
    objective = stage.objective
    with torch.no_grad():     # as if trained: a fresh UNet's zero-initialised output layers would hide any y
        g = torch.Generator().manual_seed(4)
        for parameter in objective.unet.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=g))
    ids = stage.cache.ids[:1, 0]
    context, pooled = objective.text_encoder([ids])
    eos = int((ids[0] == EOS_ID).nonzero()[0])
    assert torch.equal(pooled, context[:, eos])            # the final-normed EOS token, no projection
    seen = []
    forward = objective.unet.forward
    objective.unet.forward = lambda x, t, c, y=None: seen.append(y) or forward(x, t, c, y=y)
    objective(stage.cache.mean[:1], torch.tensor([500]), torch.zeros(1, 4, 4, 4), ids)
    assert torch.equal(seen[0], pooled)                    # training feeds y
    objective.unet.forward = forward

    vae = build_autoencoder(replace(VAE, scale_factor=0.25), seed=0)
    path = export_model(tmp_path / "p.safetensors", objective.unet, vae, objective.text_model, ModelDefaults(size=32),
                        dtype="fp32")
    model = load_model(path)
    assert model.family.pooled_text_y and model.unet.config.adm_in_channels == TEXT.hidden_size
    prompt = encode_prompt(model.text_encoder, "a red circle 0")
    cond = conditioning(model, prompt, GenerationRequest(prompt="a red circle 0", width=32, height=32))
    assert torch.allclose(cond.y, pooled, atol=1e-5)       # generation feeds the same y
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    with torch.no_grad():
        assert torch.allclose(model.unet(x, t, cond.context, y=cond.y), objective.unet(x, t, context, y=pooled),
                              atol=1e-5)
        assert not torch.allclose(model.unet(x, t, cond.context, y=cond.y), model.unet(x, t, cond.context, y=0 * cond.y))
    with pytest.raises(LatentDeskError, match="pooled-text input"):
        diffusion_stage(unet_config=replace(UNET, adm_in_channels=TEXT.hidden_size + 1))


def test_training_noise_offset_and_pyramid():
    from core.train.data import BatchRandom
    from core.train.diffusion import training_noise

    def noise(**target):
        return training_noise(BatchRandom(0, 3, 512, slice(None)), torch.Size((4, 16, 16)), NoiseTarget(**target))

    white, offset, pyramid = noise(), noise(offset_noise=0.3), noise(pyramid_noise=0.8)
    # White noise's per-channel mean has std 1/16 over 16x16 pixels; the added components raise it.
    assert white.mean(dim=(2, 3)).std() == pytest.approx(1 / 16, rel=0.1)
    assert offset.mean(dim=(2, 3)).std() == pytest.approx((0.3 ** 2 + 1 / 256) ** 0.5, rel=0.1)
    assert pyramid.mean(dim=(2, 3)).std() > 4 / 16
    assert torch.allclose(pyramid.std(dim=(1, 2, 3)), torch.ones(512), atol=1e-5)   # rescaled to unit std
    assert torch.equal(white, noise())                                               # drawn from the step's seed
    with pytest.raises(LatentDeskError, match="pyramid"):
        NoiseTarget(pyramid_noise=1.0)


def test_export_refuses_unknown_sampler_and_dtype(tmp_path):
    with pytest.raises(LatentDeskError, match="Unknown sampler"):
        ModelDefaults(sampler="Warp")
    stage = diffusion_stage()
    with pytest.raises(LatentDeskError, match="export dtype"):
        export_model(tmp_path / "m.safetensors", stage.objective.unet, build_autoencoder(VAE, 0),
                     stage.objective.text_model, dtype="int8")


# --- data ----------------------------------------------------------------------------------------

def test_captioned_folder_reads_images_and_captions(tmp_path):
    colours = {"a.png": (255, 0, 0), "b.jpg": (0, 0, 255), "c.webp": (0, 255, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (96, 64), colour).save(tmp_path / name)
    (tmp_path / "a.txt").write_text("a red\n  square ", encoding="utf-8")
    (tmp_path / "b.txt").write_text("blue", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not an image")
    data = CaptionedFolder(tmp_path, size=64)
    assert len(data) == 3
    assert [data[i][1] for i in range(3)] == ["a red square", "blue", ""]   # c.webp has no caption
    image = data[0][0]
    assert image.shape == (3, 64, 64) and image.min() >= -1 and image.max() <= 1
    assert image[0].mean() > 0.95 and image[1].mean() < -0.95


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(LatentDeskError, match="no training images"):
        CaptionedFolder(tmp_path)
    with pytest.raises(LatentDeskError, match="no such folder"):
        CaptionedFolder(tmp_path / "missing")


# --- the command line, one and two processes ------------------------------------------------------

def write_pictures(folder: Path, n: int = 4) -> Path:
    folder.mkdir()
    for i, (image, caption) in enumerate(Pictures(n)):
        pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


AE_ARGS = ["train", "autoencoder", "--size", "64", "--steps", "2", "--batch-size", "4", "--channels", "8",
           "--channel-mult", "1,1,1,1", "--crop", "0", "--log-every", "1"]


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    from app.cli.train import main

    data = write_pictures(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "app.cli.train", *AE_ARGS, "--data", str(data), "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*AE_ARGS, "--data", str(data), "--out", str(tmp_path / "one")]) == 0
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-4)
    one, two = (load_file(tmp_path / name / "autoencoder.safetensors") for name in ("one", "two"))
    assert all(torch.allclose(one[k], two[k], atol=1e-4) for k in one)


def test_train_autoencoder_takes_the_detail_finetune_from_the_command_line(tmp_path):
    from app.cli.train import main

    data = write_pictures(tmp_path / "data")
    args = [*AE_ARGS[:-4], "--crop", "32", "--log-every", "1", "--steps", "3", "--edge-focus", "10",
            "--detail-crops", "--finetune-start", "2", "--freeze-encoder", "--ema-decay", "0.9", "--ema-restart", "2"]
    assert main([*args, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    described = meta["description"]["loss"]
    assert described["edge_focus"] == 10.0 and described["detail_crops"] is True
    assert described["finetune_start"] == 2 and described["freeze_encoder"] is True
    assert meta["step"] == 3


def test_train_builtin_runs_both_stages_and_exports(tmp_path, capsys, monkeypatch):
    from app.cli.train import RECIPES, run_train_builtin
    from core.loading.checkpoint import load_model
    from core.train.recipe import BUILTIN_RECIPE as R

    recipe = replace(R, vae=replace(VAE, scale_factor=1.0), vae_loss=replace(R.vae_loss, crop=0),
                     vae_train=settings(steps=1), vae_items=2, scale_images=2, eval_images=2,
                     unet=UNET, text=TEXT, diffusion_train=settings(steps=1), diffusion_items=2)
    # `--recipe v2` picks that version's recipe (here a tiny stand-in for it).
    monkeypatch.setitem(RECIPES, "v2", recipe)
    args = SimpleNamespace(out=str(tmp_path), device="cpu", recipe="v2")
    assert run_train_builtin(args) == 0
    model = load_model(tmp_path / "builtin.safetensors")
    assert model.vae.config.scale_factor == json.loads((tmp_path / "autoencoder/autoencoder.json").read_text())[
        "scale_factor"]
    assert json.loads((tmp_path / "builtin.json").read_text())["recipe"]["diffusion_items"] == 2
    assert f"latentdesk train preview --model {tmp_path / 'builtin.safetensors'} --shapes" in capsys.readouterr().out


def test_train_builtin_starts_stage_1_at_the_finetune_from_a_shipped_models_autoencoder(tmp_path, monkeypatch):
    """--autoencoder-from: stage 1 runs only the fine-tune's steps, on that model's weights; the encoder (so
    the latents) stays that model's, and the diffusion stage trains on it as usual."""
    from app.cli.train import RECIPES, run_train_builtin
    from core.loading.checkpoint import load_model
    from core.train.recipe import BUILTIN_RECIPE as R

    recipe = replace(R, vae=replace(VAE, scale_factor=1.0), vae_loss=replace(R.vae_loss, crop=32, finetune_start=2,
                                                                             freeze_encoder=True, edge_focus=10.0),
                     vae_train=settings(steps=3), vae_items=2, scale_images=2, eval_images=2,
                     unet=UNET, text=TEXT, diffusion_train=settings(steps=1), diffusion_items=2)
    monkeypatch.setitem(RECIPES, "v2", recipe)
    assert run_train_builtin(SimpleNamespace(out=str(tmp_path / "first"), device="cpu", recipe="v2")) == 0
    shipped = tmp_path / "first" / "builtin.safetensors"
    args = SimpleNamespace(out=str(tmp_path / "second"), device="cpu", recipe="v2", autoencoder_from=str(shipped))
    assert run_train_builtin(args) == 0
    stage_1 = tmp_path / "second" / "autoencoder"
    assert [json.loads(line)["step"] for line in (stage_1 / "loss.jsonl").read_text().splitlines()] == [3]
    assert json.loads((stage_1 / "checkpoint" / "state.json").read_text())["description"]["started_from"].startswith(
        "builtin.safetensors (sha256:")
    before, after = load_model(shipped).vae, load_model(tmp_path / "second" / "builtin.safetensors").vae
    for name, weight in before.encoder.state_dict().items():
        torch.testing.assert_close(after.encoder.state_dict()[name], weight, msg=name)
    assert not torch.equal(after.decoder.conv_out.weight, before.decoder.conv_out.weight)


def test_a_built_in_model_on_16_channel_latents_trains_exports_loads_and_draws(tmp_path):
    from app.cli.train import run_train_builtin
    from core.generate import generate
    from core.loading.checkpoint import load_model
    from core.request import GenerationRequest
    from core.train.recipe import BUILTIN_RECIPE as R

    recipe = replace(R, vae=replace(VAE, z_channels=16), vae_loss=replace(R.vae_loss, crop=0),
                     vae_train=settings(steps=1), vae_items=2, scale_images=2, eval_images=2,
                     unet=replace(UNET, in_channels=16, out_channels=16), text=TEXT,
                     diffusion_train=settings(steps=1), diffusion_items=2)
    assert run_train_builtin(SimpleNamespace(out=str(tmp_path), device="cpu"), recipe) == 0
    model = load_model(tmp_path / "builtin.safetensors")
    assert model.vae.config.z_channels == 16 and model.unet.config.in_channels == 16
    image = generate(GenerationRequest(prompt="a red star", steps=2, width=64, height=64, seed=1), model).images[0]
    assert image.size == (64, 64)


def test_every_recipe_builds_within_the_size_budget():
    """Issue 4's <= 40 MB on disk (fp16) for each version's networks, and configs a loader accepts."""
    from core.loading.config_checks import check_unet_config, check_vae_config
    from core.train.recipe import RECIPES

    for name, recipe in RECIPES.items():
        check_unet_config(recipe.unet)
        check_vae_config(recipe.vae)
        unet, text_model = build_networks(recipe.unet, recipe.text, seed=0)
        vae = build_autoencoder(recipe.vae, seed=0)
        count = sum(p.numel() for net in (unet, text_model, vae) for p in net.parameters())
        assert 2 * count <= 40e6, (name, count)


def test_a_recipes_autoencoder_finetune_runs_at_the_floor_lr_from_its_own_ema_restart():
    """Where stage 1 ends in a fine-tune (v2), it is the run's last part, at the decayed learning rate, and
    the EMA starts over with it (else the shipped decoder would be partly the weights before it)."""
    from core.train.recipe import RECIPES

    tuned = [r for r in RECIPES.values() if r.vae_loss.edge_focus or r.vae_loss.detail_crops]
    assert tuned
    for recipe in tuned:
        loss, run = recipe.vae_loss, recipe.vae_train
        assert 0 < loss.finetune_start < run.steps
        assert run.ema_restart == loss.finetune_start and run.lr_decay_until <= loss.finetune_start
        assert run.lr_at(loss.finetune_start) == pytest.approx(run.lr * run.lr_floor)
        assert loss.crop and loss.freeze_encoder


def test_snr_weighted_loss_weighs_x0_errors_by_the_clamped_snr():
    """A prediction that is off by d in x0 costs clamp(SNR, low, high) * d^2, whatever the timestep."""
    from core.sampling.schedules import ZERO_SNR_SCHEDULE

    stage = diffusion_stage(target=NoiseTarget("v", zero_terminal_snr=True, snr_weight_range=(0.1, 5.0)))
    objective = stage.objective
    g = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    for t in (50, 400, 800, 999):
        abar = ZERO_SNR_SCHEDULE.alphas_cumprod[t]
        v = abar.sqrt() * noise - (1 - abar).sqrt() * latents
        # off by d = 0.3 in x0 means off by -0.3 / sqrt(1 - abar) in v (x0 = alpha x_t - sigma v)
        forward = objective.unet.forward
        objective.unet.forward = lambda x, tt, c, y=None, v=v, abar=abar: v - 0.3 / (1 - abar).sqrt()
        loss = objective(latents, torch.tensor([t]), noise, stage.cache.ids[:1, 0])["loss"].item()
        objective.unet.forward = forward
        snr = (abar / (1 - abar)).item()
        assert loss == pytest.approx(min(max(snr, 0.1), 5.0) * 0.09, rel=1e-3), t
    with pytest.raises(LatentDeskError, match="SNR weight range"):
        NoiseTarget("v", snr_weight_range=(0.0, 5.0))


def test_snapshot_exports_an_unfinished_runs_ema_weights_and_refuses_another_autoencoder(tmp_path, capsys):
    from app.cli.commands import main
    from core.loading.checkpoint import load_model
    from core.train.autoencoder import autoencoder_id
    from core.train.snapshot import export_snapshot

    vae = build_autoencoder(replace(VAE, scale_factor=0.5), seed=0)
    write_autoencoder(tmp_path / "ae.safetensors", vae)
    ae_id = autoencoder_id(tmp_path / "ae.safetensors")
    stage = diffusion_stage(autoencoder=ae_id, target=NoiseTarget("v", zero_terminal_snr=True))
    run = tmp_path / "run"
    trained = train(stage, settings(steps=4, checkpoint_every=2, ema_decay=0.9), run, ONE, io.StringIO())

    assert main(["train", "snapshot", str(run), "--autoencoder", str(tmp_path / "ae.safetensors"),
                 "--out", str(tmp_path / "snap.safetensors")]) == 0
    assert "the model at step 4 (EMA weights)" in capsys.readouterr().out
    model = load_model(tmp_path / "snap.safetensors")
    assert model.prediction == "v" and model.family.zero_terminal_snr
    ema_unet = {k.removeprefix("unet."): v for k, v in trained.ema.shadow.items() if k.startswith("unet.")}
    for name, value in model.unet.named_parameters():
        assert torch.allclose(value, ema_unet[name].half().float()), name   # the EMA's, not the raw weights

    with pytest.raises(LatentDeskError, match="trained on autoencoder"):
        export_snapshot(run, vae, "sha256:0000", tmp_path / "x.safetensors", ModelDefaults())
    with pytest.raises(LatentDeskError, match="no training checkpoint"):
        export_snapshot(tmp_path, vae, ae_id, tmp_path / "x.safetensors", ModelDefaults())


def test_training_on_the_cpu_runs_attention_through_the_plain_kernel(tmp_path, monkeypatch):
    """The default CPU (flash) attention's backward was 40 % of a stage-2 step; training avoids it."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(run) -> set[str]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return {event.key for event in prof.key_averages()}

    def step():
        q = torch.randn(2, 4, 64, 16, requires_grad=True)
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    def in_training():
        with attention_for_training(torch.device("cpu")):
            step()

    assert any("flash" in name for name in kernels(step))          # what inference uses here
    assert not any("flash" in name for name in kernels(in_training))
    # and the training loop takes its steps under it
    entered = []
    monkeypatch.setattr(loop_module, "attention_for_training",
                        lambda device: entered.append(device.type) or attention_for_training(device))
    train(diffusion_stage(), settings(steps=2, lr=1e-3), tmp_path, ONE, io.StringIO())
    assert entered == ["cpu", "cpu"]


@pytest.mark.parametrize("pays", [True, False])
def test_bf16_autocast_is_used_only_where_the_cpu_runs_it_faster(tmp_path, monkeypatch, pays):
    """Without bfloat16 units PyTorch emulates it (hundreds of times slower than float32 on an AVX2 CPU): the
    recipe's bf16 setting then trains in float32, and says so."""
    stage = diffusion_stage()
    seen = []
    forward = stage.objective.forward
    monkeypatch.setattr(stage.objective, "forward",
                        lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or forward(*a, **k))
    monkeypatch.setattr(loop_module, "autocast_pays", lambda device: pays)
    stream = io.StringIO()
    train(stage, settings(steps=2, bf16=True), tmp_path, ONE, stream)
    assert seen == [pays, pays]
    assert ("runs no faster than float32 on this CPU" in stream.getvalue()) is not pays


# --- the text encoder's caption-parsing loss ---------------------------------------------------------

def labelled_cache() -> LatentCache:
    """tiny_cache with two phrasings an item and labels for 2 attributes of 3 and 2 classes."""
    from core.text.tokenizer import ClipTokenizer
    tokenizer = ClipTokenizer()
    cache = tiny_cache()
    ids = torch.tensor([[tokenizer(f"item {i} take {k}", EOS_ID) for k in range(2)] for i in range(4)])
    labels = torch.tensor([[[i % 3, -1], [-1, k]] for i in range(4) for k in [i % 2]])   # (4, 2, 2)
    return LatentCache(cache.mean, cache.logvar, ids, cache.scale_factor, labels, (3, 2))


def test_shapes_captions_come_with_the_class_of_each_attribute_they_name():
    from core.shapes.dataset import ShapesDataset
    from core.shapes.world import ATTRIBUTE_VALUES, ATTRIBUTES
    data = ShapesDataset(0, 40, captions_per_item=3)
    assert data.label_classes == (12, 12, 6, 3, 9)
    unnamed = named = 0
    for i in range(40):
        scene = data.scene_and_caption(i)[0]
        for (text, mentioned), labels in zip(data.phrasings(i), data.caption_labels(i), strict=True):
            for attribute, label in zip(ATTRIBUTES, labels, strict=True):
                if attribute in mentioned:
                    named += 1
                    assert ATTRIBUTE_VALUES[attribute][label] == getattr(scene, attribute)
                    assert getattr(scene, attribute) in text
                else:
                    unnamed += 1
                    assert label == -1
    assert named > 200 and unnamed > 50


def test_attribute_labels_follow_the_drawn_phrasing_and_dropped_captions_name_nothing():
    stage = diffusion_stage(cache=labelled_cache(), caption_dropout=0.3, attribute_loss=0.5)
    rows = [0, 1, 2, 3] * 100
    inputs = stage.inputs(rows, BatchRandom(0, 0, 400, slice(0, 400)))
    dropped = (inputs["ids"] == stage.empty_ids).all(dim=1)
    assert 0.2 < dropped.float().mean() < 0.4 and (inputs["labels"][dropped] == -1).all()
    kept_rows = torch.tensor(rows)[~dropped]
    for row, ids, labels in zip(kept_rows, inputs["ids"][~dropped], inputs["labels"][~dropped], strict=True):
        k = next(k for k in range(2) if torch.equal(ids, stage.cache.ids[row, k]))
        assert torch.equal(labels, stage.cache.labels[row, k])
    # without the loss, inputs are what they were (no labels drawn or passed)
    assert "labels" not in diffusion_stage(cache=labelled_cache()).inputs(rows, BatchRandom(0, 0, 400, slice(0, 400)))


def test_attribute_loss_trains_a_head_on_the_eos_token_that_export_leaves_out(tmp_path):
    stage = diffusion_stage(cache=labelled_cache(), caption_dropout=0.0, attribute_loss=1.0)
    objective = stage.objective
    inputs = stage.inputs([0, 1, 2, 3], BatchRandom(0, 0, 4, slice(0, 4)))
    out = objective(**inputs)
    # a zero head says "uniform" to every caption: cross-entropy ln(classes), averaged over attributes
    expected = (torch.log(torch.tensor(3.0)) + torch.log(torch.tensor(2.0))) / 2
    assert torch.allclose(out["attributes"], expected, atol=1e-5)
    assert torch.allclose(out["loss"], out["diffusion"] + out["attributes"], atol=1e-6)
    out["loss"].backward()
    assert objective.attribute_head.weight.grad.abs().sum() > 0

    trained = train(stage, settings(steps=30, batch_size=4, lr=1e-2, log_every=10), tmp_path / "run", ONE, io.StringIO())
    logged = [json.loads(line)["attributes"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert logged[-1] < 0.5 * logged[0]
    path = export_model(tmp_path / "m.safetensors", trained.objective.unet, build_autoencoder(VAE, seed=0),
                        trained.objective.text_model, ModelDefaults(size=32))
    with safe_open(path, "pt") as f:
        assert not any("attribute" in key for key in f.keys())
    from core.train.snapshot import export_snapshot  # the run's checkpoint holds the head too
    snapshot, step = export_snapshot(tmp_path / "run", build_autoencoder(VAE, seed=0), "none",
                                     tmp_path / "snap.safetensors", ModelDefaults(size=32))
    assert step == 30 and snapshot.is_file()

    with pytest.raises(LatentDeskError, match="attributes are known"):
        diffusion_stage(attribute_loss=0.5)            # tiny_cache has no labels
    with pytest.raises(LatentDeskError, match=">= 0"):
        diffusion_stage(cache=labelled_cache(), attribute_loss=-1.0)


def test_latent_cache_keeps_labels_and_their_classes(tmp_path):
    cache = labelled_cache()
    cache.save(tmp_path / "c.safetensors", "f")
    back = LatentCache.load(tmp_path / "c.safetensors", "f")
    assert torch.equal(back.labels, cache.labels) and back.label_classes == (3, 2)
    assert LatentCache.load(tmp_path / "c.safetensors", "g") is None
    from core.shapes.dataset import ShapesDataset
    data = ShapesDataset(0, 3, captions_per_item=2)
    built = build_latent_cache(build_autoencoder(VAE, seed=0).eval(), data, stream=io.StringIO())
    assert built.labels.shape == (3, 2, 5) and built.label_classes == data.label_classes
    assert built.labels[1].tolist() == data.caption_labels(1)


def test_the_caption_probe_trains_a_reader_on_a_mix_and_scores_each_held_out_phrasing(tmp_path):
    """scripts/caption_probe.py, tiny: a run in its own process (it sets the mix's module constants), scores
    per attribute for the templates (grouped by marker phrase) and the structures (by held-out rule)."""
    from core.shapes.captions import HELDOUT_MARKERS
    from core.shapes.grammar import HELDOUT_RULES

    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "caption_probe.py"), "--items", "30", "--steps", "3",
                           "--batch-size", "16", "--eval", "60", "--grammar-share", "0.3", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["grammar_share"] == 0.3 and result["steps"] == 3
    assert set(result["templates"]) - {"all"} <= set(HELDOUT_MARKERS) and len(result["templates"]) > 5
    assert set(result["grammar"]) - {"all"} <= set(HELDOUT_RULES) and len(result["grammar"]) > 1
    for scores in (*result["templates"].values(), *result["grammar"].values()):
        assert scores and all(0 <= v <= 1 for v in scores.values())


# --- a fine-tune of a trained model (train diffusion --from) -------------------------------------------

def test_train_diffusion_from_a_model_starts_at_its_weights_and_resumes_only_that_start(tmp_path):
    from app.cli.train import main
    from core.loading.checkpoint import load_model

    write_autoencoder(tmp_path / "ae.safetensors", build_autoencoder(replace(VAE, scale_factor=0.5), seed=0))
    flags = ["train", "diffusion", "--autoencoder", str(tmp_path / "ae.safetensors"), "--shapes", "--shapes-items",
             "2", "--steps", "1", "--batch-size", "2", "--log-every", "1", "--model-channels", "16", "--channel-mult",
             "1,2", "--res-blocks", "1", "--attention", "0,1", "--heads", "2", "--text-width", "32", "--text-layers",
             "1", "--text-heads", "2", "--device", "cpu"]
    assert main(flags + ["--out", str(tmp_path / "first"), "--lr", "1e-2"]) == 0
    first = tmp_path / "first" / "model.safetensors"
    # A learning rate too small to move a weight: what is exported is the start, not fresh networks.
    assert main(flags + ["--out", str(tmp_path / "tuned"), "--from", str(first), "--lr", "1e-12"]) == 0
    before, after = load_model(first), load_model(tmp_path / "tuned" / "model.safetensors")
    for name, weight in before.unet.state_dict().items():
        torch.testing.assert_close(after.unet.state_dict()[name], weight, msg=name)
    for name, weight in before.text_encoder.state_dict().items():
        torch.testing.assert_close(after.text_encoder.state_dict()[name], weight, msg=name)
    described = json.loads((tmp_path / "tuned" / "checkpoint" / "state.json").read_text())["description"]
    assert described["started_from"].startswith("model.safetensors (sha256:")
    # The same folder goes on only from the same start
    assert main(flags + ["--out", str(tmp_path / "tuned"), "--from", str(tmp_path / "tuned" / "model.safetensors"),
                         "--lr", "1e-12", "--steps", "2"]) == 2
    assert main(flags + ["--out", str(tmp_path / "fresh"), "--lr", "1e-12"]) == 0
    fresh = load_model(tmp_path / "fresh" / "model.safetensors").unet.state_dict()
    assert any(not torch.allclose(fresh[k], v) for k, v in before.unet.state_dict().items())


def test_train_diffusion_from_a_model_of_another_shape_says_what_differs(tmp_path, capsys):
    from app.cli.train import main
    from tests.tiny_models import write_single_file

    write_autoencoder(tmp_path / "ae.safetensors", build_autoencoder(VAE, seed=0))
    model = write_single_file("sd1", tmp_path / "other.safetensors")
    assert main(["train", "diffusion", "--autoencoder", str(tmp_path / "ae.safetensors"), "--shapes", "--shapes-items",
                 "2", "--steps", "1", "--out", str(tmp_path / "run"), "--from", str(model), "--device", "cpu",
                 "--prediction", "epsilon", "--no-zero-terminal-snr"]) == 2
    message = capsys.readouterr().err
    assert "its UNet is not the one these flags describe" in message and "model_channels" in message
    assert not (tmp_path / "run" / "latents.safetensors").exists()    # refused before the latents are made
