"""OpenVINO, the second reference: the runtime FastSD CPU uses, on the very weights the diffusers comparison has.

    require_openvino() -> the openvino module, or LatentDeskError naming the missing package
    default_precision() -> what OpenVINO's CPU plugin computes in when not told ("bf16" on AVX512-BF16/AMX CPUs)
    openvino_unet_case(pair, device) / openvino_vae_case(pair, device) -> Case

Imported lazily, here only: Latent Desk never needs openvino (a bench-only extra, like diffusers).
Each case converts diffusers' module (ov.convert_model with an example input, traced as torch.jit.trace
would) and compiles it for the CPU twice: with INFERENCE_PRECISION_HINT f32, and with the plugin's
default. Ours runs at float32 and at bfloat16 (a copy of our network cast, as core/precision.py does);
all four run in one rotation, and each of ours is divided by OpenVINO at the matching precision.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch

from app.cli.bench.cases import (
    relative_difference,
    unet_step_inputs,
    unet_step_work,
    vae_decode_inputs,
    vae_decode_work,
)
from app.cli.bench.pair import ModelPair
from app.cli.bench.timing import Case, timed
from core.errors import LatentDeskError

OURS_FP32, OURS_BF16, OV_F32 = "ours float32", "ours bfloat16", "OpenVINO f32"


def require_openvino():
    try:
        import openvino
    except ImportError as e:
        raise LatentDeskError("`latentdesk bench compare --against openvino` needs OpenVINO, which is not "
                              f"installed: pip install openvino ({e})") from None
    return openvino


def default_precision() -> str:
    """The CPU plugin's INFERENCE_PRECISION_HINT before anyone sets it, e.g. "bf16" or "f32"."""
    return require_openvino().Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def ov_default_name() -> str:
    return f"OpenVINO default ({default_precision()})"


class _Outputs(torch.nn.Module):
    """diffusers' networks return output dataclasses; the converter traces plain tensors."""

    def __init__(self, module: torch.nn.Module, call: Callable[..., torch.Tensor]):
        super().__init__()
        self.module, self.call = module, call

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.call(self.module, *inputs)


def converted(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
    """`module` traced on `inputs` (float32) into an OpenVINO model."""
    ov = require_openvino()
    with torch.no_grad(), warnings.catch_warnings():
        # diffusers' shape checks trace as constants: true for the one input shape each case runs at.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Traced here rather than by convert_model so the trace is not run twice more to check it
        # (torch.jit.trace's check_trace): at SD1.5 size that is most of a minute. The converter
        # takes the traced module as it would its own trace.
        traced = torch.jit.trace(module, inputs, check_trace=False, strict=False)
        return ov.convert_model(traced, example_input=inputs)


def compile_for_cpu(model, precision: str | None):
    """An OpenVINO model compiled for the CPU plugin; precision None: the plugin's default."""
    # LATENCY is the plugin's default hint today; named so a change of default cannot move the numbers.
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return require_openvino().Core().compile_model(model, "CPU", config)


def runner(compiled, inputs: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    """One inference on `inputs` (float32, as the converted graph takes them) -> the output as a torch tensor."""
    request = compiled.create_infer_request()
    arrays = [tensor.detach().float().cpu().numpy() for tensor in inputs]

    def run() -> torch.Tensor:
        request.infer(arrays)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def _openvino_case(name: str, title: str, device, work: dict[str, Callable[[], torch.Tensor]],
                   ours_bf16: Callable[[], torch.Tensor], theirs: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                   details: dict) -> Case:
    # float32 weights and inputs on the CPU: app/cli/bench/compare.py refuses any other --dtype or --device.
    ov_default = ov_default_name()
    model = converted(theirs, inputs)
    ov_f32 = runner(compile_for_cpu(model, "f32"), inputs)
    compiled_default = compile_for_cpu(model, None)
    run_default = runner(compiled_default, inputs)
    outputs = {OURS_FP32: work["ours"], OURS_BF16: ours_bf16, OV_F32: ov_f32, ov_default: run_default}
    with torch.no_grad():
        exact = work["ours"]()
        # Against our float32 output: how far each other run is from the same network in full precision.
        details["max_relative_difference"] = {run: relative_difference(fn(), exact)
                                              for run, fn in outputs.items() if run != OURS_FP32}
    details["openvino_default_precision"] = compiled_default.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    details["openvino_converted"] = "diffusers' module: torch.jit.trace, ov.convert_model, compiled for CPU"
    return Case(name, title, {run: timed(fn, device) for run, fn in outputs.items()}, baseline=None,
                pairs={OURS_FP32: OV_F32, OURS_BF16: ov_default}, details=details)


def _bfloat16_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to(torch.bfloat16)


def openvino_unet_case(pair: ModelPair, device) -> Case:
    """One guided step's UNet call (batch 2), the same inputs the diffusers comparison times."""
    spec = pair.spec
    x, t, context = unet_step_inputs(pair, device)
    unet = _bfloat16_copy(pair.ours.unet)
    x16, context16 = x.to(torch.bfloat16), context.to(torch.bfloat16)
    theirs = _Outputs(pair.theirs["unet"], lambda unet, x, t, c: unet(x, t, encoder_hidden_states=c).sample)
    size, latent = spec.image_size, spec.latent_size
    return _openvino_case("unet", f"UNet step, {size}x{size} (batch {spec.batch}, {latent}x{latent} latents)",
                          device, unet_step_work(pair, device), lambda: unet(x16, t, context16),
                          theirs, (x, t, context), {"latents": tuple(x.shape), "context": tuple(context.shape)})


def openvino_vae_case(pair: ModelPair, device) -> Case:
    """One image's latents to pixels, the decoder alone."""
    spec = pair.spec
    z = vae_decode_inputs(pair, device)
    vae, z16 = _bfloat16_copy(pair.ours.vae), z.to(torch.bfloat16)
    theirs = _Outputs(pair.theirs["vae"], lambda vae, z: vae.decode(z).sample)
    return _openvino_case("vae", f"VAE decode, {spec.image_size}x{spec.image_size}", device,
                          vae_decode_work(pair, device), lambda: vae.decode(z16), theirs, (z,),
                          {"latents": tuple(z.shape), "image": (1, 3, spec.image_size, spec.image_size)})
