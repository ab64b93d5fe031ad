"""Reading `.safetensors` model files defensively.

We parse the header ourselves instead of handing the file to a library first:
the checks below turn every way a file can be broken or hostile into one
`ModelLoadError` that names the file and the reason. Tensors are read with
`readinto` straight into their final dtype, or through one reused staging
buffer where they are converted, so a model is never held twice in memory
(no memory map of the file, no intermediate full copy).
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import LatentDeskError, ModelLoadError, shown
from core.loading.untrusted_json import UnreadableJson, loads

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
MAX_HEADER_BYTES = 100 * 1024 * 1024    # the safetensors format's own limit
MAX_METADATA_BYTES = 16 * 1024 * 1024   # kohya-style training notes reach a few MB, never more
MAX_METADATA_ENTRIES = 10_000
MAX_TENSORS = 100_000
# A shape is made into a tensor (or its strides computed) even when it holds no data, and a zero-size
# tensor passes the size check whatever its other dimensions say. Real weights have at most 4 or 5
# dimensions and far fewer than 2**40 elements (4 TB in fp32), so these refuse nothing that exists.
MAX_RANK = 8
MAX_ELEMENTS = 2**40

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def refuse_pickle(path: Path) -> None:
    """Pickled checkpoints run code when loaded; we never unpickle them by default."""
    raise ModelLoadError(
        path,
        "this is a pickle-based PyTorch file, which can run arbitrary code when opened, so Latent Desk "
        "does not open it. Download the .safetensors version of this model instead.",
    )


def looks_pickled(path: Path) -> bool:
    """A torch.save zip archive or a raw pickle stream, whatever the file is called.

    A real .safetensors file starts with its header length and then `{`, which
    neither of those can, so that is checked first.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int   # byte offset from the start of the file
    end: int


class LoadCancelled(LatentDeskError):
    """The load was stopped: the user chose another model meanwhile."""


_this_thread = threading.local()


@contextmanager
def reads_stop_when(cancel: threading.Event | None) -> Iterator[None]:
    """Tensor reads in this thread stop (LoadCancelled) once `cancel` is set. A load superseded by a
    newer choice would otherwise read gigabytes more, and hold them, for nothing."""
    previous, _this_thread.cancel = getattr(_this_thread, "cancel", None), cancel
    try:
        yield
    finally:
        _this_thread.cancel = previous


class SafetensorsFile:
    """A checked `.safetensors` file: its tensor table and metadata, tensors read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries, self.metadata = _read_header(self.path)

    def keys(self) -> list[str]:
        return list(self.entries)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

    def read_many(self, keys: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Tensors by key, floats converted to `dtype`, each checked for NaN/Inf.

        Tensors that change dtype are read through one staging buffer, reused for all of them:
        a fresh buffer per tensor meant faulting in the file's size of new memory a second time
        (about 0.45 s a GB on the 2-core machine; loading a 2 GB fp16 file went from 0.73 to 0.40 of
        diffusers' time, docs/PERFORMANCE.md).
        """
        entries = sorted(((k, self.entries[k]) for k in keys), key=lambda item: item[1].begin)
        targets = {k: dtype if (dtype is not None and e.dtype in FLOAT_DTYPES) else DTYPES[e.dtype] for k, e in entries}
        converted = [e.end - e.begin for k, e in entries if targets[k] != DTYPES[e.dtype]]
        staging = torch.empty(max(converted, default=0), dtype=torch.uint8)
        try:
            with open(self.path, "rb", buffering=0) as f:
                return {key: self._read_one(f, key, entry, targets[key], staging) for key, entry in entries}
        except OSError as e:   # the file went away or its drive did since the header was read
            raise ModelLoadError(self.path, f"cannot be read ({e.strerror or e})") from None

    def _read_one(self, f, key: str, entry: TensorEntry, target: torch.dtype, staging: torch.Tensor) -> torch.Tensor:
        cancel = getattr(_this_thread, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise LoadCancelled(f"loading {self.path.name} was stopped")
        stored = DTYPES[entry.dtype]
        nbytes = entry.end - entry.begin
        final = torch.empty(entry.shape, dtype=target)
        raw = final if target == stored else staging[:nbytes].view(stored).view(entry.shape)
        f.seek(entry.begin)
        if nbytes and _read_fully(f, raw) != nbytes:
            raise ModelLoadError(self.path, f"file ends inside tensor {key!r} (truncated download?)")
        if entry.dtype in FLOAT_DTYPES and nbytes and not all_finite(raw):
            raise ModelLoadError(self.path, f"tensor {key!r} contains NaN or infinite values; the file is damaged")
        return final if target == stored else final.copy_(raw)


def _read_fully(f, into: torch.Tensor) -> int:
    """readinto until `into` is full or the file ends (an unbuffered read may return less)."""
    view, got = memoryview(into.view(-1).view(torch.uint8).numpy()), 0   # bytes: numpy has no bfloat16
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor`: its smallest and largest values are finite.

    One reduction, and exact: min and max propagate NaN, and an infinity is the max or the min.
    `torch.isfinite(t).all()` makes a bool tensor of every weight and reads it again; on an SD1.5
    checkpoint that was most of the load time (10x slower than aminmax on fp16 weights, measured).
    """
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    if not path.exists():
        raise ModelLoadError(path, "file not found")
    if not path.is_file():
        raise ModelLoadError(path, "not a file")
    try:
        if path.suffix.lower() in PICKLE_SUFFIXES or looks_pickled(path):
            refuse_pickle(path)
        size, raw_header = _raw_header(path)
        header = loads(raw_header.decode("utf-8"))
    except OSError as e:   # no permission, a network drive gone, ...
        raise ModelLoadError(path, f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ModelLoadError(path, "header is not valid JSON (not UTF-8 text): not a .safetensors file") from None
    except UnreadableJson as e:
        raise ModelLoadError(path, f"header is {e}: not a .safetensors file") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, "header is not a JSON object: not a .safetensors file")

    metadata = _check_metadata(path, header.pop("__metadata__", {}))
    if len(header) > MAX_TENSORS:
        raise ModelLoadError(path, f"header lists {len(header)} tensors, more than any model has")
    data_start = 8 + len(raw_header)
    entries = {}
    for key, info in header.items():
        entries[key] = _check_entry(path, key, info, data_start)
    _check_layout(path, entries, data_start, size)
    return entries, metadata


def _raw_header(path: Path) -> tuple[int, bytes]:
    """The file's size and its header's bytes, the length checked against the file."""
    size = path.stat().st_size
    if size < 8:
        raise ModelLoadError(path, f"only {size} bytes long: not a .safetensors model (empty or truncated file)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise ModelLoadError(
                path, f"header length {header_len} does not fit the file ({size} bytes): "
                "not a .safetensors file, or truncated")
        return size, f.read(header_len)


def _check_metadata(path: Path, metadata) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise ModelLoadError(path, "header __metadata__ is not a JSON object")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ModelLoadError(path, f"header __metadata__ has {len(metadata)} entries (limit {MAX_METADATA_ENTRIES})")
    total = 0
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise ModelLoadError(path, f"header __metadata__[{k[:60]!r}] is {type(v).__name__}, expected text")
        total += len(k) + len(v)
    if total > MAX_METADATA_BYTES:
        raise ModelLoadError(path, f"header __metadata__ holds {total} characters (limit {MAX_METADATA_BYTES})")
    return metadata


def _check_entry(path: Path, key: str, info, data_start: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise ModelLoadError(path, f"header entry {key!r} is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ModelLoadError(path, f"tensor {key!r} has unsupported dtype {shown(dtype)}")
    if not _is_shape(shape):
        raise ModelLoadError(path, f"tensor {key!r} has an invalid shape {shown(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise ModelLoadError(path, f"tensor {key!r} has invalid data offsets {shown(offsets)}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise ModelLoadError(
            path, f"tensor {key!r}: shape {tuple(shape)} of {dtype} needs {nbytes} bytes, the header gives {end - begin}")
    return TensorEntry(dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _is_shape(shape) -> bool:
    """Whole dimensions, few enough, whose product (zero-length ones counted as 1) torch can index."""
    return (isinstance(shape, list) and len(shape) <= MAX_RANK and all(_is_count(n) for n in shape)
            and math.prod(max(n, 1) for n in shape) <= MAX_ELEMENTS)


def _check_layout(path: Path, entries: dict[str, TensorEntry], data_start: int, size: int) -> None:
    """Tensors must tile the data area exactly: no overlaps, no gaps, nothing past the end."""
    position = data_start
    for key, e in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin != position:
            raise ModelLoadError(path, f"tensor {key!r} starts at byte {e.begin}, expected {position} (overlap or gap)")
        position = e.end
    if position > size:
        raise ModelLoadError(path, f"file is {size} bytes but its tensors need {position}: truncated (incomplete download?)")
    if position < size:
        raise ModelLoadError(path, f"{size - position} unexplained bytes after the last tensor: damaged file")
