"""Memory is checked before it is spent: a model that cannot fit is refused before a weight is
read, a second model that fits only alone replaces the first, free memory is known on every
platform (psutil), and a prompt cannot grow the text context without bound."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.jobs import Finished
from core import memory
from core.errors import ModelLoadError
from core.loading import footprint
from core.loading.checkpoint import load_model
from core.loading.safetensors_io import SafetensorsFile
from tests.test_app import run


def test_free_memory_comes_from_psutil_and_an_exotic_system_means_no_check(monkeypatch):
    free = memory.available_bytes(torch.device("cpu"))
    assert free is not None and free > 2**20
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    assert memory.available_bytes(torch.device("cpu")) is None


def test_weights_bytes_counts_what_is_loaded_in_the_chosen_precision(tiny_model, tmp_path):
    tensors = load_file(tiny_model)
    fp32 = footprint.weights_bytes(tiny_model, torch.float32)
    assert fp32 == sum(t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size()
                       for t in tensors.values())
    assert footprint.weights_bytes(tiny_model, torch.bfloat16) < 0.6 * fp32
    # a training checkpoint's EMA copy is never loaded, so it does not count
    with_ema = dict(tensors, **{"model_ema." + k.replace(".", ""): v.clone() for k, v in tensors.items()
                                if k.startswith("model.diffusion_model.")})
    save_file(with_ema, tmp_path / "ema.safetensors")
    assert footprint.weights_bytes(tmp_path / "ema.safetensors", torch.float32) == fp32


def test_a_model_too_large_for_free_memory_is_refused_before_a_weight_is_read(tiny_model, monkeypatch):
    needed = footprint.weights_bytes(tiny_model, torch.float32)
    monkeypatch.setattr(memory, "available_bytes", lambda device: needed)
    reads = []
    monkeypatch.setattr(SafetensorsFile, "read_many", lambda self, *a, **k: reads.append(a))
    with pytest.raises(ModelLoadError, match=r"needs about .* GiB of memory to load"):
        load_model(tiny_model)
    assert reads == []


def test_a_model_that_fits_only_alone_replaces_the_loaded_one(open_window, qtbot, tiny_model, tmp_path,
                                                              monkeypatch):
    window = open_window()
    second = tmp_path / "second.safetensors"
    second.write_bytes(tiny_model.read_bytes())
    needed = footprint.weights_bytes(second, torch.float32)
    # As if the first model took the memory the second needs: free only once it is released.
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device: needed if window.model is not None else int(needed / 0.9) + 2**20)
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.open_model(str(second))
    assert window.model.spec == str(second)
    assert "was closed to make room for second" in window.message_bar.text()
    monkeypatch.undo()
    window.panel.prompt.setPlainText("a red star")
    window.panel.width.setValue(64)
    window.panel.height.setValue(64)
    window.panel.steps.setValue(2)
    assert isinstance(run(qtbot, window), Finished)


def test_reads_stop_once_the_load_is_cancelled(tiny_model):
    import threading

    from core.loading.safetensors_io import LoadCancelled, reads_stop_when

    file, cancel = SafetensorsFile(tiny_model), threading.Event()
    with reads_stop_when(cancel):
        assert file.read_many(file.keys()[:2])       # not cancelled: reads
        cancel.set()
        with pytest.raises(LoadCancelled):
            file.read_many(file.keys()[:2])
    assert file.read_many(file.keys()[:2])           # other loads in this thread are not affected


def test_a_superseded_load_stops_reading(open_window, qtbot, tiny_model, tmp_path, monkeypatch):
    """Choosing another model while one loads stopped nothing: the old load read (and held) all of its
    file for nothing."""
    import time

    window = open_window()
    slow, other = tmp_path / "slow.safetensors", tmp_path / "other.safetensors"
    slow.write_bytes(tiny_model.read_bytes())
    other.write_bytes(tiny_model.read_bytes())
    real, reads = SafetensorsFile._read_one, []

    def read_one(self, f, key, *args):
        if self.path == slow:
            reads.append(key)
            time.sleep(0.02)
        return real(self, f, key, *args)

    monkeypatch.setattr(SafetensorsFile, "_read_one", read_one)
    window.open_model(str(slow))
    qtbot.waitUntil(lambda: len(reads) >= 3, timeout=30_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.open_model(str(other))
    stopped_at = len(reads)
    qtbot.wait(500)
    total = len(SafetensorsFile(slow).keys())
    assert len(reads) == stopped_at < total, f"the superseded load read {len(reads)} of {total} tensors"
    assert window.model.spec == str(other) and window.message_bar.kind != "error"


def test_a_diffusers_folder_counts_every_shard_of_one_variant(tmp_path):
    unet = tmp_path / "model" / "unet"
    unet.mkdir(parents=True)
    for name in ("diffusion_pytorch_model-00001-of-00002.safetensors",
                 "diffusion_pytorch_model-00002-of-00002.safetensors"):
        save_file({"w": torch.zeros(1000)}, unet / name)
    for name in ("diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                 "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"):
        save_file({"w": torch.zeros(1000, dtype=torch.float16)}, unet / name)
    assert footprint.weights_bytes(tmp_path / "model", torch.float32) == 2 * 1000 * 4
    for name in ("diffusion_pytorch_model-00001-of-00002.safetensors",
                 "diffusion_pytorch_model-00002-of-00002.safetensors"):
        (unet / name).unlink()
    assert footprint.weights_bytes(tmp_path / "model", torch.float32) == 2 * 1000 * 4   # the fp16 shards, both
