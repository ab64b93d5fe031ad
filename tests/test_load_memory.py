"""Loading never holds two full copies of a model: peak memory stays near one copy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from core.families import UNET_PREFIX
from core.nets.unet import UNet, UNetConfig
from tests.tiny_models import original_layout_state

# ~140 M parameters: 560 MB in fp32, enough to see a second copy well above the noise.
MEDIUM_UNET = UNetConfig(model_channels=128, context_dim=64)


def write_medium_model(path, dtype: torch.dtype):
    state = {k: v for k, v in original_layout_state("sd1").items() if not k.startswith(UNET_PREFIX)}
    state |= {UNET_PREFIX + k: v for k, v in UNet(MEDIUM_UNET).state_dict().items()}
    save_file({k: v.to(dtype) for k, v in state.items()}, path)
    return sum(v.numel() for v in state.values()) * 4  # bytes once loaded in fp32


def peak_growth(path) -> dict:
    """Load in a fresh process; report resident memory before, and the peak after."""
    script = textwrap.dedent(f"""
        import json
        import torch, transformers
        from core.loading.checkpoint import load_model
        # VmHWM, not getrusage: ru_maxrss keeps the forking parent's high-water mark across exec.
        def status(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        before = status("VmRSS")
        model = load_model({str(path)!r})
        print(json.dumps({{"before": before, "peak": status("VmHWM"), "after": status("VmRSS")}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stored", [torch.float16, torch.float32])
def test_peak_memory_is_one_copy(tmp_path, stored):
    path = tmp_path / "medium.safetensors"
    model_bytes = write_medium_model(path, stored)
    rss = peak_growth(path)
    growth = rss["peak"] - rss["before"]
    print(f"\n[memory] stored {stored}: model {model_bytes / 2**20:.0f} MiB, peak growth {growth / 2**20:.0f} MiB")
    assert model_bytes * 0.9 < growth < model_bytes * 1.25, (growth, model_bytes)
