"""Schedule types (core/sampling/schedule_types.py): their shapes, parity with diffusers where it has the
same schedule, the 1-step SD-Turbo case, the request, the PNG, the command line and the window."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import mpmath
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from app.cli.commands import main
from core.errors import LatentDeskError
from core.generate import generate
from core.metadata.infotext import request_from_infotext, to_infotext
from core.metadata.png_files import read_parameters
from core.request import GenerationRequest, check_request
from core.sampling.denoiser import Conditioning, Denoiser
from core.sampling.sampler_names import AUTOMATIC, SAMPLER_NAMES, SCHEDULE_NAMES, resolve_schedule
from core.sampling.samplers import SAMPLERS, sample_euler
from core.sampling.schedule_types import (
    AYS_SD1,
    AYS_SDXL,
    BETA_ALPHA,
    BETA_BETA,
    SCHEDULE_TYPES,
    beta_cdf,
    beta_ppf,
    schedule_sigmas,
)
from core.sampling.schedules import SD_SCHEDULE, ZERO_SNR_SCHEDULE
from tests.test_generate import reference_pipeline, reference_txt2img, relative, sd1  # noqa: F401 (a fixture)
from tests.test_samplers import TOLERANCE, run_diffusers, tiny  # noqa: F401 (a fixture)
from tests.test_schedules import SD_CONFIG

EULER = SAMPLERS["Euler"]
STEPS = (1, 2, 3, 7, 10, 20, 33, 50, 150)
# diffusers' EulerDiscreteScheduler configuration that has the same sigmas as each schedule type
DIFFUSERS_SAME = {
    "Uniform": {"timestep_spacing": "linspace"},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "DDIM": {"timestep_spacing": "leading"},
    "Karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
}
HAS_SCIPY = importlib.util.find_spec("scipy") is not None  # diffusers' use_beta_sigmas needs it


def test_the_torch_free_names_are_the_schedule_types_in_their_order():
    assert tuple(SCHEDULE_TYPES) == SCHEDULE_NAMES
    assert SCHEDULE_NAMES[0] == AUTOMATIC == GenerationRequest().schedule


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("schedule", [SD_SCHEDULE, ZERO_SNR_SCHEDULE], ids=["sd", "zero-snr"])
@pytest.mark.parametrize("xl", [False, True])
def test_each_type_decreases_to_zero_in_steps_steps(name, schedule, xl):
    for steps in STEPS:
        sigmas = schedule_sigmas(name, steps, schedule, EULER, xl=xl)
        assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
        assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all(), (name, steps)
        assert sigmas[0] <= schedule.sigma_max * (1 + 1e-6)


def test_automatic_is_each_samplers_own():
    for name, spec in SAMPLERS.items():
        for steps in (1, 4, 25):
            assert torch.equal(schedule_sigmas(AUTOMATIC, steps, SD_SCHEDULE, spec), spec.sigmas(steps)), name


@pytest.mark.parametrize("name", list(DIFFUSERS_SAME))
def test_sigmas_equal_diffusers_euler(name):
    config = DIFFUSERS_SAME[name]
    if "use_beta_sigmas" in config and not HAS_SCIPY:
        pytest.skip("diffusers' use_beta_sigmas needs scipy, which is not installed")
    worst = 0.0
    # 1 step is left out: diffusers' "linspace" puts it at t = 0 (ours at 999, see schedules.py); 61 and 103
    # too: diffusers' "trailing" makes one timestep too many there through float error
    for steps in (2, 4, 7, 9, 20, 50, 150):
        reference = EulerDiscreteScheduler.from_config({**SD_CONFIG, **config})
        reference.set_timesteps(steps)
        ours = schedule_sigmas(name, steps, SD_SCHEDULE, EULER)
        worst = max(worst, (ours - reference.sigmas.float()).abs().max().item())
    print(f"\n[parity] {name} sigmas vs EulerDiscreteScheduler({config}): max abs diff {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("name", ["SGM Uniform", "DDIM", "Karras", "Exponential"])
def test_euler_on_a_tiny_unet_matches_diffusers(tiny, name):  # noqa: F811 (the fixture)
    steps = 6
    scheduler = EulerDiscreteScheduler.from_config({**SD_CONFIG, **DIFFUSERS_SAME[name]})
    reference = run_diffusers(tiny, scheduler, steps)
    denoiser = Denoiser(lambda x, t, context, y: tiny.unet(x, t, encoder_hidden_states=context).sample, "epsilon")
    cond = Conditioning(tiny.context)
    sigmas = schedule_sigmas(name, steps, SD_SCHEDULE, EULER)
    start = tiny.latents * float(scheduler.init_noise_sigma)  # σ0, or sqrt(σ0² + 1) for "leading"
    ours = sample_euler(lambda x, sigma: denoiser(x, sigma, cond), start, sigmas)
    diff = (ours - reference).abs().max().item()
    print(f"\n[parity] Euler + {name}, tiny UNet, {steps} steps: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE * reference.abs().max().item()


@pytest.mark.parametrize("name", ["SGM Uniform", "Karras"])
def test_txt2img_pipeline_matches_diffusers(sd1, name):  # noqa: F811 (the fixture)
    folder, model = sd1
    req = GenerationRequest(prompt="a small green triangle", negative_prompt="blurry", steps=5, guidance=5.0,
                            sampler="Euler", schedule=name, seed=42, width=64, height=64)
    ours = generate(req, model).latents
    pipe = reference_pipeline(folder, "txt2img", "Euler")
    pipe.scheduler = EulerDiscreteScheduler.from_config({**pipe.scheduler.config, **DIFFUSERS_SAME[name]})
    diff = relative(ours, reference_txt2img(pipe, req))
    print(f"\n[parity] txt2img Euler + {name}: relative max diff {diff:.2e}")
    assert diff <= 1e-4


def test_one_sgm_uniform_step_starts_from_pure_noise_at_t_999():
    for spec in SAMPLERS.values():
        sigmas = schedule_sigmas("SGM Uniform", 1, SD_SCHEDULE, spec)
        assert sigmas.tolist() == [pytest.approx(SD_SCHEDULE.sigma_max), 0.0]
        assert SD_SCHEDULE.sigma_to_t(sigmas[:1]).item() == pytest.approx(999, abs=1e-3)
    # the other step counts start there too, every 1000/n timesteps below it
    assert SD_SCHEDULE.sigma_to_t(schedule_sigmas("SGM Uniform", 4, SD_SCHEDULE, EULER)[:-1]).tolist() == \
        pytest.approx([999, 749, 499, 249], abs=1e-3)


def test_simple_normal_and_ddim_take_their_timesteps():
    table = SD_SCHEDULE.sigmas
    # ComfyUI's simple_scheduler: sigmas[-(1 + int(k · 1000/n))]
    assert torch.equal(schedule_sigmas("Simple", 3, SD_SCHEDULE, EULER)[:-1], table[[999, 666, 333]])
    # Normal: 999 … 0 evenly, log sigma interpolated; ends on the table's own values
    normal = schedule_sigmas("Normal", 3, SD_SCHEDULE, EULER)
    assert normal[[0, 2]].tolist() == pytest.approx([table[999].item(), table[0].item()], rel=1e-6)
    mid = (table[499].log() + table[500].log()) / 2
    assert normal[1].item() == pytest.approx(mid.exp().item(), rel=1e-6)
    # DDIM: diffusers' "leading", steps_offset 1
    assert SD_SCHEDULE.sigma_to_t(schedule_sigmas("DDIM", 4, SD_SCHEDULE, EULER)[:-1]).tolist() == \
        pytest.approx([751, 501, 251, 1], abs=1e-3)


def test_beta_quantiles_and_sigmas():
    p = np.linspace(0, 1, 41)
    q = beta_ppf(p, BETA_ALPHA, BETA_BETA)
    reference = [float(mpmath.betainc(BETA_ALPHA, BETA_BETA, 0, x, regularized=True)) for x in q]
    assert np.abs(np.array(reference) - p).max() < 1e-12
    assert np.abs(beta_cdf(q, BETA_ALPHA, BETA_BETA) - p).max() < 1e-12
    low, high = SD_SCHEDULE.sigma_min, SD_SCHEDULE.sigma_max
    sigmas = schedule_sigmas("Beta", 5, SD_SCHEDULE, EULER)
    expected = low + beta_ppf(np.array([1, 0.75, 0.5, 0.25, 0]), 0.6, 0.6) * (high - low)
    assert sigmas[:-1].tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert sigmas[2].item() == pytest.approx((low + high) / 2, rel=1e-6)   # the median of a symmetric Beta


@pytest.mark.parametrize(("xl", "table"), [(False, AYS_SD1), (True, AYS_SDXL)])
def test_align_your_steps_tables(xl, table):
    ten = schedule_sigmas("Align Your Steps", 10, SD_SCHEDULE, EULER, xl=xl)
    assert ten.tolist() == pytest.approx([*table[:-1], 0.0], rel=1e-6)    # NVIDIA's 10-step schedule
    # 20 steps: 21 levels log-linearly between the 11, so every other one is the table's, and the ones
    # between are geometric means
    twenty = schedule_sigmas("Align Your Steps", 20, SD_SCHEDULE, EULER, xl=xl)
    assert twenty[0:20:2].tolist() == pytest.approx(list(table[:-1]), rel=1e-6)
    assert twenty[1].item() == pytest.approx((table[0] * table[1]) ** 0.5, rel=1e-6)
    assert twenty[-1] == 0


def test_unknown_schedule_types_are_refused_in_one_line():
    with pytest.raises(LatentDeskError, match="Unknown schedule type 'Karras z'"):
        schedule_sigmas("Karras z", 4, SD_SCHEDULE, EULER)
    with pytest.raises(LatentDeskError, match="Unknown schedule type") as caught:
        check_request(GenerationRequest(schedule="karras"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("sampler", "schedule", "meant"), [
    ("DPM++ 2M Karras", "Automatic", ("DPM++ 2M Karras", "Automatic")),     # as it always was
    ("DPM++ 2M", "Karras", ("DPM++ 2M Karras", "Automatic")),               # the same thing, one spelling
    ("DPM++ 2M SDE Karras", "Karras", ("DPM++ 2M SDE Karras", "Automatic")),
    ("DPM++ 2M Karras", "Beta", ("DPM++ 2M", "Beta")),                      # the schedule type replaces Karras
    ("DPM++ 2M SDE Karras", "Exponential", ("DPM++ 2M SDE Karras", "Exponential")),
    ("Euler", "Karras", ("Euler", "Karras")),
])
def test_resolve_schedule(sampler, schedule, meant):
    assert resolve_schedule(sampler, schedule) == meant


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_png_round_trip(sampler, schedule):
    made = GenerationRequest(prompt="p", sampler=sampler, schedule=schedule, steps=9)
    text = to_infotext(made, None, None, None)
    read, notes = request_from_infotext(text, GenerationRequest())
    assert notes == []
    assert resolve_schedule(read.sampler, read.schedule) == resolve_schedule(sampler, schedule)
    if resolve_schedule(sampler, schedule)[1] != AUTOMATIC:
        assert f"Schedule type: {schedule}," in text


def test_automatic_writes_what_it_always_wrote():
    assert "Sampler: Euler a, CFG" in to_infotext(GenerationRequest(sampler="Euler a"), None, None, None)
    karras = to_infotext(GenerationRequest(sampler="DPM++ 2M Karras"), None, None, None)
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG" in karras
    old = "p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512"   # before A1111 1.9
    read, _ = request_from_infotext(old, GenerationRequest())
    assert (read.sampler, read.schedule) == ("DPM++ 2M Karras", AUTOMATIC)
    euler = "p\nSteps: 20, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 1, Seed: 1, Size: 512x512"
    read, notes = request_from_infotext(euler, GenerationRequest())
    assert (read.sampler, read.schedule, notes) == ("Euler a", "SGM Uniform", [])


# -- the command line and the window ---------------------------------------------------------------

def test_one_step_sd_turbo_style_through_the_command_line(tmp_path, capsys, tiny_model):
    out = tmp_path / "turbo.png"
    code = main(["generate", "--model", str(tiny_model), "--prompt", "a red circle", "--steps", "1", "--guidance",
                 "1", "--sampler", "Euler a", "--schedule", "SGM Uniform", "--seed", "3", "--width", "64",
                 "--height", "64", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    text = read_parameters(out)
    assert "Sampler: Euler a, Schedule type: SGM Uniform," in text
    read, _ = request_from_infotext(text, GenerationRequest())
    assert (read.steps, read.sampler, read.schedule) == (1, "Euler a", "SGM Uniform")


def test_the_command_line_refuses_an_unknown_schedule_in_one_line(tmp_path, capsys, tiny_model):
    code = main(["generate", "--model", str(tiny_model), "--prompt", "x", "--schedule", "Polyexponential",
                 "--out", str(tmp_path / "x.png")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Unknown schedule type 'Polyexponential'" in err
    assert not (tmp_path / "x.png").exists()


def test_the_window_combo_round_trip(qtbot):
    from app.widgets.controls import ControlsPanel

    panel = ControlsPanel()
    qtbot.addWidget(panel)
    assert [panel.schedule.itemText(i) for i in range(panel.schedule.count())] == list(SCHEDULE_NAMES)
    assert panel.request().schedule == AUTOMATIC
    for name in SCHEDULE_NAMES:
        panel.apply_request(replace(panel.request(), sampler="Euler a", schedule=name))
        assert panel.schedule.currentText() == name and panel.request().schedule == name
