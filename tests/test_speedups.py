"""The approximate speed-ups through generate(): off changes nothing, deep cache skips the deep blocks
on most steps, the guidance cut-off runs the last steps unguided on half the batch, bad values are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.errors import LatentDeskError
from core.generate import generate
from core.loading.checkpoint import load_model
from core.request import GenerationRequest, check_request
from core.sampling.guidance import GuidanceScale
from core.sampling.speedups import steps_part
from tests.tiny_models import write_single_file

STEPS = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(write_single_file("sd1", tmp_path_factory.mktemp("speedups") / "tiny.safetensors", seed=8))


def request(**changes) -> GenerationRequest:
    return replace(GenerationRequest(prompt="a red circle", negative_prompt="blue", steps=STEPS, guidance=5.0,
                                     sampler="DPM++ 2M", seed=3, width=64, height=64), **changes)


def run(model, req: GenerationRequest, **kwargs):
    """generate() with every UNet call recorded as (ran the middle block, batch rows), step by step."""
    calls, steps = [], []

    def every_call(module, inputs):
        calls.append([False, inputs[0].shape[0]])

    def deep(module, inputs):
        calls[-1][0] = True

    on_step = kwargs.pop("on_step", None)

    def record(step):
        steps.append((step.guidance, calls[:]))
        calls.clear()
        if on_step:
            on_step(step)

    hooks = [model.unet.input_blocks[0].register_forward_pre_hook(every_call),
             model.unet.middle_block.register_forward_pre_hook(deep)]
    try:
        result = generate(req, model, on_step=record, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return result, steps


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_off_is_the_plain_guided_unet_every_step(model):
    result, steps = run(model, request())
    assert [guidance for guidance, _ in steps] == [5.0] * STEPS
    assert all(calls == [[True, 2]] for _, calls in steps)   # one full UNet call on uncond + cond
    # The deep cache's other settings mean nothing while its interval is 1 (off).
    again = generate(request(deep_cache_interval=1, deep_cache_blocks=2, deep_cache_start=0.5), model)
    assert torch.equal(result.latents, again.latents)


def test_deep_cache_runs_the_deep_blocks_on_one_step_in_interval_and_stays_close(model):
    exact = generate(request(), model).latents
    result, steps = run(model, request(deep_cache_interval=3, deep_cache_start=0.2))
    deep = "".join("F" if calls[0][0] else "r" for _, calls in steps)
    assert deep == "FF" + "rrF" * 2 + "rr"          # first 20 % in full, then one step in three
    other_seed = generate(request(seed=4), model).latents
    assert 0 < relative(result.latents, exact) < 0.2 * relative(other_seed, exact)


def test_heun_with_deep_cache_calls_the_unet_twice_a_step_with_one_decision(model):
    _, steps = run(model, request(sampler="Heun", steps=6, deep_cache_interval=3, deep_cache_start=0.0))
    kinds = [[deep for deep, _ in calls] for _, calls in steps]
    assert kinds == [[True, True], [False, False], [False, False], [True, True], [False, False], [False]]


def test_guidance_cutoff_runs_the_last_steps_at_scale_1_on_half_the_batch(model):
    scale = GuidanceScale(5.0)

    def slider(step):   # the user moves the slider mid-run: it acts until the cut-off, not after
        if step.i == 2:
            scale.value = 8.0

    result, steps = run(model, request(guidance_cutoff=0.3), guidance=scale, on_step=slider)
    assert [guidance for guidance, _ in steps] == [5.0] * 3 + [8.0] * 4 + [1.0] * 3
    assert [calls[0][1] for _, calls in steps] == [2] * 7 + [1] * 3
    assert len(result.images) == 1


def test_both_together_fall_back_to_a_full_step_where_the_batch_halves(model):
    _, steps = run(model, request(deep_cache_interval=4, deep_cache_start=0.0, guidance_cutoff=0.3))
    kinds = "".join(("F" if calls[0][0] else "r") + str(calls[0][1]) for _, calls in steps)
    assert kinds == "F2r2r2r2F2r2r2F1r1r1"   # step 7 is the first unguided one: new batch, full step


def test_steps_part_rounds_half_up():
    assert [steps_part(20, f) for f in (0, 0.3, 0.35, 0.99)] == [0, 6, 7, 20]
    assert steps_part(10, 0.25) == 3 and steps_part(3, 0.35) == 1


@pytest.mark.parametrize("changes,words", [
    ({"deep_cache_interval": 0}, "deep cache interval"),
    ({"deep_cache_interval": 2.5}, "deep cache interval"),
    ({"deep_cache_blocks": 0}, "deep cache blocks"),
    ({"deep_cache_start": 1.0}, "deep cache start"),
    ({"guidance_cutoff": -0.1}, "guidance cut-off"),
    ({"guidance_cutoff": 1.0}, "guidance cut-off"),
    ({"guidance_cutoff": float("nan")}, "guidance cut-off"),
])
def test_bad_values_are_refused_with_a_message(changes, words):
    with pytest.raises(LatentDeskError, match=words):
        check_request(request(**changes))


def test_more_deep_cache_blocks_than_the_model_has_is_refused_by_generate(model):
    with pytest.raises(LatentDeskError, match="input blocks"):
        generate(request(deep_cache_interval=3, deep_cache_blocks=99), model)
