"""One job through the engine: generate, preview every step, save every image. Runs in the worker
thread (app/worker.py), which imports this module when its first job arrives: torch and the engine
load there, never while the window is opening.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from app.jobs import Failed, Finished, Job, Message, PreviewMode, StepPreview, StepRecord, Stopped, Unsaved
from app.preview import make_previewer, pil_to_qimage
from core import __version__
from core.errors import LatentDeskError
from core.generate import Cancelled, StepInfo, generate
from core.metadata.infotext import to_infotext
from core.metadata.png_files import save_png
from core.precision import precision_name

log = logging.getLogger(__name__)


def run_job(job: Job, post_preview) -> Message:
    """Generate, preview every step, save every image (not for Live runs). Runs in the worker thread."""
    started = time.perf_counter()
    records: list[StepRecord] = []
    frames: list = []          # every step's preview image: the window's timeline replays them
    previewers: dict[PreviewMode, object] = {}
    state = {"first_step_at": None, "sent": 0, "preview_broken": False}

    def on_step(step: StepInfo) -> None:
        if job.cancel.is_set():
            raise Cancelled
        now = time.perf_counter()
        if step.i == 0:
            state["first_step_at"] = now
        first = state["first_step_at"]
        records.append(StepRecord(step.i, step.guidance, step.sigma))
        image = preview_image(step)
        frames.append(image)
        post_preview(StepPreview(job.id, step.i, step.total, image, step.guidance,
                                 now - first if first is not None else 0.0))
        state["sent"] += 1

    def preview_image(step: StepInfo):
        mode, noisy = job.preview.get()
        if state["preview_broken"]:
            return None
        if mode not in previewers:
            previewers[mode] = make_previewer(mode, job.model)
        previewer = previewers[mode]
        if previewer is None:
            return None
        try:
            return previewer(step, noisy)
        except Exception:   # a preview must never cost the image: stop previewing, keep sampling
            log.exception("preview failed; previews are off for the rest of this run")
            state["preview_broken"] = True
            return None

    try:
        result = generate(job.request, job.model.diffusion, on_step=on_step, guidance=job.guidance, cancel=job.cancel)
    except LatentDeskError as e:
        return Failed(job.id, str(e))
    except (torch.OutOfMemoryError, MemoryError):
        return Failed(job.id, "Out of memory. Try a smaller size, fewer images at once, or close other programs.")
    except Exception as e:
        log.exception("generation failed")
        return Failed(job.id, f"Generation failed unexpectedly ({type(e).__name__}: {e}).")
    if result.cancelled:
        return Stopped(job.id, result.steps_done, tuple(records))

    images = tuple(pil_to_qimage(image) for image in result.images)
    paths, unsaved, errors = [], [], []
    model = job.model
    for image, preview, seed in zip(result.images, images, result.seeds, strict=True):
        request = replace(job.request, seed=seed, batch=1)
        infotext = to_infotext(request, model.diffusion.name, model.hash, f"Latent Desk {__version__}",
                               [record.guidance for record in records], precision=precision_name(model.diffusion))
        if not job.save:
            unsaved.append(Unsaved(image, preview, infotext, job.output_dir))
            continue
        try:        # every image gets its own try: one that cannot be written must not cost the others
            paths.append(save_png(image, job.output_dir, infotext))
        except Exception as e:      # noqa: BLE001 - LatentDeskError for OSError, anything else logged too
            if not isinstance(e, LatentDeskError):
                log.exception("saving image failed")
            errors.append(str(e))
            unsaved.append(Unsaved(image, preview, infotext, job.output_dir))
    save_error = None
    if errors:
        save_error = errors[0] if len(errors) == len(images) else \
            f"{len(errors)} of {len(images)} images could not be saved: {errors[0]}"
    return Finished(job.id, job.request, images, tuple(paths), tuple(records), time.perf_counter() - started,
                    state["sent"], save_error, tuple(frames), tuple(unsaved), not job.save)
