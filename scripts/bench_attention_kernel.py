"""The blocked bf16 attention (core/nets/attention_kernel.py) against PyTorch's fused SDPA, in one process.

    python scripts/bench_attention_kernel.py [--runs 5] [--json docs/performance/attention_kernel.json]

Two parts, each alternating the two paths round by round on the same inputs:
  layers: one attention call at the shapes of an SD1.5 step at 512 px (batch 2) and of the VAE's mid-block;
  unet:   a whole bf16 UNet step of an SD1.5-shaped UNet (random weights, batch 2, 64x64 latents), with
          the engine's attention() as it is, and with the blocked path switched off (SDPA everywhere).
Reports medians and the per-round ratio blocked / SDPA, and how far each output is from float32 SDPA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.nets import attention_kernel  # noqa: E402
from core.nets.unet import UNet, UNetConfig  # noqa: E402

LAYERS = {  # name: (batch, heads, queries, keys, head dim)
    "SD1.5 self-attention 64x64": (2, 8, 4096, 4096, 40),
    "SD1.5 self-attention 32x32": (2, 8, 1024, 1024, 80),
    "SD1.5 self-attention 16x16": (2, 8, 256, 256, 160),
    "VAE mid-block 512 px": (1, 1, 4096, 4096, 512),
}


class SdpaOnly:
    """Switches the blocked path off inside a `with` block."""

    def __enter__(self):
        self.saved = attention_kernel.MIN_KEYS, attention_kernel.MIN_QUERIES_SHORT_KEYS
        attention_kernel.MIN_KEYS = attention_kernel.MIN_QUERIES_SHORT_KEYS = 1 << 62

    def __exit__(self, *exc):
        attention_kernel.MIN_KEYS, attention_kernel.MIN_QUERIES_SHORT_KEYS = self.saved


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(runs: int, blocked, sdpa) -> dict:
    blocked(), sdpa()                                                # warm-up
    times = {"blocked": [], "sdpa": []}
    for round_ in range(runs):
        order = [("blocked", blocked), ("sdpa", sdpa)][:: 1 if round_ % 2 == 0 else -1]
        for name, fn in order:
            times[name].append(timed(fn))
    ratios = [b / s for b, s in zip(times["blocked"], times["sdpa"], strict=True)]
    return {"median_s": {name: statistics.median(t) for name, t in times.items()},
            "ratio_blocked_over_sdpa": statistics.median(ratios), "ratios": ratios, "raw_s": times}


def layers(runs: int) -> dict:
    out = {}
    for name, (batch, heads, queries, keys, dim) in LAYERS.items():
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, n, heads, dim).transpose(1, 2).bfloat16()
                   for n in (queries, keys, keys))
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        blocked = partial(attention_kernel.attention, q, k, v)
        sdpa = partial(F.scaled_dot_product_attention, q, k, v)
        with torch.inference_mode():
            record = alternate(runs, blocked, sdpa)
            record["max_abs_error_vs_float32"] = {name: float((fn().float() - exact).abs().max())
                                                  for name, fn in (("blocked", blocked), ("sdpa", sdpa))}
        out[name] = record
        print(f"{name}: {record['median_s']}, ratio {record['ratio_blocked_over_sdpa']:.2f}", flush=True)
    return out


def unet_step(runs: int) -> dict:
    torch.manual_seed(0)
    unet = UNet(UNetConfig()).eval()
    x, t, context = torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
    with torch.inference_mode():
        exact = unet(x, t, context)
        unet = unet.to(torch.bfloat16)
        x, context = x.bfloat16(), context.bfloat16()

        def sdpa():
            with SdpaOnly():
                return unet(x, t, context)

        record = alternate(runs, lambda: unet(x, t, context), sdpa)
        scale = float(exact.abs().max())
        record["max_relative_difference_vs_float32"] = {
            "blocked": float((unet(x, t, context).float() - exact).abs().max()) / scale,
            "sdpa": float((sdpa().float() - exact).abs().max()) / scale}
    print(f"UNet step: {record['median_s']}, ratio {record['ratio_blocked_over_sdpa']:.2f}", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "layers": layers(args.runs), "unet_step_512px_batch2_bf16": unet_step(args.runs)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
