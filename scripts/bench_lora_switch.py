"""What switching LoRAs costs on an SD1.5-shaped model (random weights), and what the alternative would.

    python scripts/bench_lora_switch.py [--rank 32] [--repeats 5] [--no-side-path]

Two kohya-style rank-32 LoRAs on the layers kohya's default LoRA trains (every Linear and 1x1 conv of
the UNet's transformers, every Linear of the text encoder's layers) are written to a temporary folder,
read with `read_lora`, then switched with `AppliedLoras.set`: A -> B -> A at 0.8 -> A+B at 0.5 each ->
none, repeated; the median and worst switch are printed (issue 23's bound: 1 s).

The alternative to patching weights is running each LoRA's low-rank path beside its layer. With
`--side-path` (the default) one UNet call (64x64 latent, batch 1) is timed three ways: the base model,
the model patched with LoRA A, and the base model with A's path added by forward hooks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli.bench.random_sd15 import clip_l_config  # noqa: E402
from core.families import SD1  # noqa: E402
from core.loading.lora_apply import AppliedLoras  # noqa: E402
from core.loading.lora_files import lora_layers, read_lora  # noqa: E402
from core.model import DiffusionModel  # noqa: E402


def random_sd15() -> DiffusionModel:
    """Our networks at SD1.5's sizes, PyTorch's default random init, float32 (as loaded by default)."""
    from transformers import CLIPTextModel

    from core.nets.unet import UNet, UNetConfig
    from core.nets.vae import AutoencoderKL, VAEConfig
    from core.text.encoder import TextEncoder

    torch.manual_seed(0)
    text = TextEncoder([CLIPTextModel(clip_l_config())], SD1.text_encoders)
    return DiffusionModel(SD1, UNet(UNetConfig()).eval(), AutoencoderKL(VAEConfig()).eval(), text.eval(),
                          "epsilon", "random weights", Path("random-sd15"))


def kohya_targets(model: DiffusionModel) -> dict[str, torch.nn.Module]:
    """kohya name -> layer, for the layers kohya's default (non-LoCon) LoRA trains."""
    unet = {f"lora_unet_{name.replace('.', '_')}": m for name, m in lora_layers(model.unet).items()
            if ".transformer_blocks." in name or name.endswith(("proj_in", "proj_out"))}
    text = {f"lora_te_text_model_{name.removeprefix('text_model.').replace('.', '_')}": m
            for name, m in lora_layers(model.text_encoder.models[0]).items() if ".layers." in name}
    return unet | text


def write_lora(path: Path, targets: dict[str, torch.nn.Module], rank: int, seed: int) -> Path:
    g, sd = torch.Generator().manual_seed(seed), {}
    for key, layer in targets.items():
        out, fan_in = layer.weight.shape[:2]
        extra = (1, 1) if layer.weight.dim() == 4 else ()
        sd[key + ".lora_down.weight"] = (torch.randn((rank, fan_in, *extra), generator=g) * 0.01).half()
        sd[key + ".lora_up.weight"] = (torch.randn((out, rank, *extra), generator=g) * 0.01).half()
        sd[key + ".alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    save_file(sd, path)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_path_hooks(model: DiffusionModel, lora, weight: float) -> list:
    """Forward hooks adding weight·scale·up(down(x)) to each UNet layer's output: the unpatched alternative."""
    layers = lora_layers(model.unet)
    hooks = []
    for change in lora.changes:
        if change.network != "unet":
            continue
        layer = layers[change.module]
        down, up = change.tensors["down"].float(), change.tensors["up"].float()
        scale = weight * float(change.tensors["alpha"]) / down.shape[0]

        def hook(module, inputs, output, down=down, up=up, scale=scale):
            x = inputs[0]
            if down.dim() == 4:
                return output + scale * F.conv2d(F.conv2d(x, down), up)
            return output + scale * F.linear(F.linear(x, down), up)

        hooks.append(layer.register_forward_hook(hook))
    return hooks


def unet_call(model: DiffusionModel) -> float:
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        return timed(lambda: model.unet(x, torch.tensor([500.0]), context))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-side-path", action="store_true", help="skip the UNet-call timings")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    build = time.perf_counter()
    model = random_sd15()
    print(f"SD1.5-shaped model built in {time.perf_counter() - build:.1f} s")
    targets = kohya_targets(model)
    with tempfile.TemporaryDirectory() as folder:
        paths = [write_lora(Path(folder) / f"{name}.safetensors", targets, args.rank, seed)
                 for seed, name in enumerate("AB")]
        start = time.perf_counter()
        a, b = (read_lora(path, model) for path in paths)
        size = sum(p.stat().st_size for p in paths) / 2 / 2**20
    print(f"2 LoRAs, rank {args.rank}, {len(a.changes)} layers, {size:.0f} MB each (fp16): "
          f"read both in {time.perf_counter() - start:.2f} s")

    applied = AppliedLoras(model)
    first = timed(lambda: applied.set([(a, 1.0)]))
    copies = sum(t.numel() * t.element_size() for t in applied._originals.values()) / 2**20
    print(f"first apply (copies the originals, {copies:.0f} MB): {first:.3f} s")
    plan = [[(b, 1.0)], [(a, 0.8)], [(a, 0.5), (b, 0.5)], [(a, 1.0)]]
    switches = [timed(lambda step=step: applied.set(step)) for _ in range(args.repeats) for step in plan]
    print(f"switch (A<->B, weight change, A+B): median {statistics.median(switches):.3f} s, "
          f"worst {max(switches):.3f} s over {len(switches)}")
    print(f"clear (restore the originals): {timed(applied.clear):.3f} s")

    if not args.no_side_path:
        unet_call(model)    # warm-up
        base = min(unet_call(model) for _ in range(2))
        applied.set([(a, 1.0)])
        patched = min(unet_call(model) for _ in range(2))
        applied.clear()
        hooks = side_path_hooks(model, a, 1.0)
        side = min(unet_call(model) for _ in range(2))
        for hook in hooks:
            hook.remove()
        print(f"UNet call, 64x64 latent, batch 1: base {base:.2f} s, patched {patched:.2f} s, "
              f"side path {side:.2f} s (+{side - base:.2f} s a call, x{2 * 20} calls for 20 steps with guidance)")


if __name__ == "__main__":
    main()
