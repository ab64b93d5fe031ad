"""What the session asks the worker to do, and what the worker answers: plain values.

The session (app/session.py) builds a `Job` (a frozen value: the request plus the live handles the user may
turn while it runs) and hands it to `app/worker.py`. The worker answers with immutable
messages (krita-ai-diffusion's pattern): `StepPreview` after every step, then exactly one of
`Finished`, `Stopped` or `Failed`. Nothing here knows about widgets.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from PySide6.QtGui import QImage

from core.request import GenerationRequest
from core.sampling.guidance_scale import GuidanceScale

if TYPE_CHECKING:   # the window imports this module before torch has loaded
    from torch import Tensor, nn

    from core.attention_maps import AttentionMaps
    from core.fetch.addons import AddOns
    from core.model import DiffusionModel
    from core.nets.latent_rgb import LatentToRGB


class PreviewMode(enum.Enum):
    """How a step's preview is made; `app/preview.py` `make_previewer` is the one place that maps a
    mode to a previewer."""

    # The order is the preview menu's order.
    AUTO = "auto"    # the tiny decoder every step when the model has one; else VAE decodes while all previews
                     # together cost <= 8 % of the sampling time, the fast map between them
    VAE = "vae"      # the predicted clean latent through the model's own VAE decoder, every step
    TINY = "tiny"    # a small network trained to imitate the VAE decoder (core/nets/preview_decoder.py), full size
    FAST = "fast"    # a linear latent→RGB map fitted to the model's VAE when it loaded (core/nets/latent_rgb.py)
    OFF = "off"      # progress only

    @property
    def label(self) -> str:
        return {"auto": "Auto", "vae": "VAE every step", "tiny": "Tiny decoder", "fast": "Fast",
                "off": "Off"}[self.value]


class PreviewOptions:
    """Preview settings the user may change while a job runs; read by the worker every step."""

    def __init__(self, mode: PreviewMode = PreviewMode.AUTO, noisy: bool = False):
        self._lock = threading.Lock()
        self._mode, self._noisy = mode, noisy

    def get(self) -> tuple[PreviewMode, bool]:
        with self._lock:
            return self._mode, self._noisy

    def set(self, mode: PreviewMode, noisy: bool) -> None:
        with self._lock:
            self._mode, self._noisy = mode, noisy


@dataclass(frozen=True)
class ReadyModel:
    """A model as the app holds it, ready to generate with: the engine's model plus what the PNG
    metadata records and what draws its previews. (The engine's own `LoadedParts` is the pieces of a
    checkpoint before they are assembled; this is the whole, as a job carries it.)"""

    diffusion: DiffusionModel   # the engine's model: networks, family, device
    spec: str                 # "builtin" or the path, as GenerationRequest.model stores it
    hash: str | None          # A1111's "Model hash"
    latent_rgb: LatentToRGB | None = None   # the Fast preview's map, fitted to this model's VAE at load
    preview_decoder: nn.Module | None = None   # the Tiny preview's network (ours or TAESD), when the model has one
    preview_note: str | None = None   # why a preview-decoder file beside the model was not used, for the user


@dataclass(frozen=True)
class Job:
    id: int
    request: GenerationRequest
    model: ReadyModel
    output_dir: Path
    guidance: GuidanceScale                       # live: the slider sets it while the job runs
    preview: PreviewOptions                       # live: the preview menu sets it
    cancel: threading.Event = field(default_factory=threading.Event)
    save: bool = True         # False for Live runs: their images stay in the window until the user saves one
    addons: AddOns | None = None  # the LoRAs and embeddings found, by name; None before the first scan ends
    word_maps: bool = False   # also sum each word's cross-attention (core/attention_maps.py): Finished.attention


class Draft(NamedTuple):
    """A draft image's final latents and what its PNG records, kept so that "Final" can draw the same image through
    the VAE later without sampling again, and write the PNG a run with the VAE would have written."""

    latents: Tensor           # (1, 4, h, w) float32 on the CPU: the sampler's output, before any decoder
    request: GenerationRequest   # this image's own (its seed, batch 1), decoder "taesd"
    model_spec: str           # ReadyModel.spec of the model that sampled it: only that model's VAE fits
    guidances: tuple[float, ...]   # the guidance scale of each step, as the infotext records it
    precision: str            # core.precision.precision_name of the model when it sampled
    loras: tuple[tuple[str, str], ...] = ()        # GenerationResult.loras
    embeddings: tuple[tuple[str, str], ...] = ()   # GenerationResult.embeddings
    attention: AttentionMaps | None = None         # the draft's word maps: its Final is the same picture


@dataclass(frozen=True)
class FinalJob:
    """Decode a kept draft through the model's VAE ("Final"): one decode, nothing sampled again. The worker runs
    it whole (it cannot stop half way through a decode) and runs Generate's jobs after it."""

    id: int
    draft: Draft
    model: ReadyModel
    output_dir: Path


class StepRecord(NamedTuple):
    """One sampler step as it happened: kept for every step, never dropped."""

    i: int
    guidance: float
    sigma: float


class StepPreview(NamedTuple):
    """After step i of total. Only the newest waiting one is shown; older ones are dropped."""

    job: int
    i: int
    total: int
    image: QImage | None      # None when previews are off
    guidance: float           # the guidance scale this step used
    # Seconds from the end of step 0 to the end of step i. Step 0 also pays the warm-up (text encoding,
    # first allocations), so the pace is measured over the i steps after it: core.eta.pace(i, total - 1, …).
    seconds_after_first: float


class Unsaved(NamedTuple):
    """A finished image that is not on disk: its save failed, or a Live run made it. The window keeps
    it (history strip, marked "not saved") until the user saves, copies or discards it."""

    image: object             # the PIL image, saved as it is when the user asks
    preview: QImage
    infotext: str
    output_dir: Path
    mask: object = None       # an inpainting's mask (PIL "L"), saved beside the image as "NNNNN-mask.png"


class Finished(NamedTuple):
    job: int
    request: GenerationRequest
    images: tuple[QImage, ...]    # kept in memory too, so a failed save loses nothing
    paths: tuple[Path, ...]       # where each image was saved (fewer than images if saving failed)
    steps: tuple[StepRecord, ...]
    seconds: float
    previews_sent: int
    save_error: str | None = None
    frames: tuple[QImage | None, ...] = ()   # every step's preview, for the denoising timeline
    unsaved: tuple[Unsaved, ...] = ()        # the images not in `paths`, every one of them
    live: bool = False
    notes: tuple[str, ...] = ()              # what the engine adjusted on the way (a mask scaled), for the user
    # A draft run's latents, one per image in the order of `paths` then `unsaved` (None where not a draft): the
    # history keeps them (bounded) for "Final".
    drafts: tuple[Draft | None, ...] = ()
    # Word maps (a Job with word_maps), one per image in the same order as `drafts`, on the CPU; None where not made.
    attention: tuple[AttentionMaps | None, ...] = ()


class Stopped(NamedTuple):
    """Cancelled by the user (or by a newer Generate); nothing was saved."""

    job: int
    steps_done: int
    steps: tuple[StepRecord, ...]


class Failed(NamedTuple):
    job: int
    message: str              # for the user, as it is


Message = StepPreview | Finished | Stopped | Failed
