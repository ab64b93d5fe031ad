"""`latentdesk eval shapes` and `latentdesk bench` (app/cli/measure.py, core/shapes/evaluate.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.cli.commands import main
from core.nets.unet import UNetConfig
from core.nets.vae import VAEConfig
from core.shapes.captions import HELDOUT_MARKERS
from core.shapes.evaluate import EvalCase, Tally, ground_truth, heldout_cases, score_images
from core.shapes.world import ATTRIBUTES, render
from core.train.autoencoder import build_autoencoder
from core.train.diffusion import TextEncoderConfig, build_networks
from core.train.export import ModelDefaults, export_model


@pytest.fixture(scope="module")
def tiny_shapes_model(tmp_path_factory):
    """An untrained model exported as the built-in one is: 128 px default, v-prediction, zero-SNR schedule."""
    unet, text = build_networks(UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                           transformer_depth=(0, 1), num_heads=(2, 2), context_dim=32, norm_groups=8),
                                TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2), seed=0)
    vae = build_autoencoder(VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4,
                                      scale_factor=0.5), seed=0)
    return export_model(tmp_path_factory.mktemp("measure") / "tiny.safetensors", unet, vae, text,
                        ModelDefaults(size=128, steps=2, guidance=3.0, sampler="Euler"), prediction="v",
                        zero_terminal_snr=True)


def test_heldout_cases_use_only_heldout_templates_and_are_reproducible():
    cases = heldout_cases(200)
    assert len(cases) == 200 and cases == heldout_cases(200)
    assert all(any(marker in case.caption for marker in HELDOUT_MARKERS) for case in cases)
    assert all(case.mentioned and case.caption for case in cases)   # no empty captions to score
    assert heldout_cases(5, seed=1) != heldout_cases(5, seed=2)


def test_checker_scores_rendered_ground_truth_at_100_percent():
    tally = ground_truth(heldout_cases(200))
    assert tally.images == 200 and tally.all_named == 1.0
    assert all(tally.accuracy(a) == 1.0 and tally.named[a] > 0 for a in ATTRIBUTES)


def test_wrong_pictures_are_scored_wrong():
    cases = heldout_cases(60)
    shifted = [render(cases[(i + 1) % len(cases)].scene) for i in range(len(cases))]   # each caption, another scene
    tally = score_images(cases, shifted)
    assert tally.all_named < 0.3
    assert all(tally.accuracy(a) < 0.8 for a in ATTRIBUTES)


def test_tally_counts_only_named_attributes():
    tally = Tally()
    tally.add({"color": True, "shape": False})
    tally.add({"color": True})
    assert (tally.accuracy("color"), tally.accuracy("shape"), tally.all_named) == (1.0, 0.0, 0.5)
    assert tally.named["position"] == 0 and tally.as_dict()["images"] == 2


def test_eval_shapes_prints_the_table_and_writes_json(tmp_path, capsys, tiny_shapes_model):
    out = tmp_path / "eval.json"
    code = main(["eval", "shapes", "--model", str(tiny_shapes_model), "--n", "3", "--guidance", "1", "4",
                 "--json", str(out), "--images", str(tmp_path / "images")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rendered ground truth" in printed and "guidance 1 " in printed and "guidance 4 " in printed
    results = json.loads(out.read_text())
    assert results["ground_truth"]["all_named"] == 1.0
    assert results["steps"] == 2 and results["sampler"] == "Euler"   # the model's defaults
    assert set(results["guidance"]) == {"1", "4"} and results["guidance"]["4"]["images"] == 3
    assert len(list((tmp_path / "images").glob("g4_*.png"))) == 3


def test_bench_reports_each_run_and_the_median(capsys, tiny_shapes_model):
    assert main(["bench", "--model", str(tiny_shapes_model), "--runs", "3", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "64x64, 2 steps, Euler, guidance 3" in printed
    assert printed.count("  run ") == 3 and "median" in printed


@pytest.mark.parametrize("args,words", [
    (["eval", "shapes", "--n", "0"], "--n must be at least 1"),
    (["bench", "--runs", "0"], "--runs must be at least 1"),
])
def test_bad_measure_arguments(capsys, tiny_shapes_model, args, words):
    assert main([*args, "--model", str(tiny_shapes_model)]) == 2
    assert words in capsys.readouterr().err


def test_eval_case_is_plain_data():
    case = heldout_cases(1)[0]
    assert isinstance(case, EvalCase) and replace(case, caption="x").scene == case.scene
