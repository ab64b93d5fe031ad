"""What the numbers were measured on: a ratio from one machine says little about another."""

from __future__ import annotations

import importlib
import os
import platform
import sys

import torch


def cpu_model() -> str:
    try:   # Linux; platform.processor() there often says only "x86_64"
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))   # what this process may run on (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            pass
        try:  # on the path without its metadata, as when copied onto a lent GPU machine
            return getattr(importlib.import_module(name), "__version__", None)
        except ImportError:
            return None

    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "diffusers": package("diffusers"),
        "transformers": package("transformers"),
        "openvino": package("openvino"),   # only `bench compare --against openvino` needs it
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
