"""One job through the engine: generate, preview every step, save every image; or a draft's "Final" decode. Runs in the worker
thread (app/worker.py), which imports this module when its first job arrives: torch and the engine
load there, never while the window is opening.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from app.jobs import (
    Draft,
    Failed,
    FinalJob,
    Finished,
    Job,
    Message,
    PreviewMode,
    StepPreview,
    StepRecord,
    Stopped,
    Unsaved,
)
from app.preview import make_previewer, pil_to_qimage
from core import __version__
from core.attention_maps import AttentionMaps, AttentionSettings
from core.errors import LatentDeskError
from core.generate import Cancelled, StepInfo, decode, generate, inpaint_plan
from core.metadata.infotext import to_infotext
from core.metadata.png_files import save_png_and_mask
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
        result = generate(job.request, job.model.diffusion, on_step=on_step, guidance=job.guidance, cancel=job.cancel,
                          addons=job.addons, tiny_decoder=job.model.preview_decoder,
                          attention=AttentionSettings() if job.word_maps else None)
    except LatentDeskError as e:
        return Failed(job.id, str(e))
    except (torch.OutOfMemoryError, MemoryError):
        return Failed(job.id, "Out of memory. Try a smaller size, fewer images at once, or close other programs.")
    except Exception as e:
        log.exception("generation failed")
        return Failed(job.id, f"Generation failed unexpectedly ({type(e).__name__}: {e}).")
    if result.cancelled:
        return Stopped(job.id, result.steps_done, tuple(records))

    model = job.model
    requests = [replace(job.request, seed=seed, batch=1) for seed in result.seeds]
    guidances = tuple(record.guidance for record in records)
    infotexts = [to_infotext(request, model.diffusion.name, model.hash, f"Latent Desk {__version__}", guidances,
                             precision=precision_name(model.diffusion), lora_hashes=result.loras,
                             ti_hashes=result.embeddings) for request in requests]
    images = tuple(pil_to_qimage(image) for image in result.images)
    outcomes, save_error = save_images(result.images, images, infotexts, job.output_dir, result.mask, job.save)
    maps = [on_the_cpu(m) for m in result.attention] if result.attention else [None] * len(images)
    drafts = [None] * len(images)
    if job.request.decoder == "taesd" and result.latents is not None:
        # a copy, not a view: a view of the batch would keep every image's latents alive as long as one is kept
        drafts = [Draft(result.latents[i:i + 1].detach().to("cpu", torch.float32, copy=True), request, model.spec,
                        guidances, precision_name(model.diffusion), result.loras, result.embeddings, maps[i])
                  for i, request in enumerate(requests)]
    paths, unsaved, drafts, maps = split_outcomes(outcomes, drafts, maps)
    return Finished(job.id, job.request, images, paths, tuple(records), time.perf_counter() - started,
                    state["sent"], save_error, tuple(frames), unsaved, not job.save, tuple(result.notes), drafts,
                    maps)


def on_the_cpu(maps: AttentionMaps) -> AttentionMaps:
    """`maps` with every word's map a float32 CPU tensor of its own: the window keeps them while the model (and the
    probe's sums, on its device) move on to the next run."""
    def moved(words):
        return [replace(w, map=w.map.detach().to("cpu", torch.float32, copy=True)) for w in words]
    return replace(maps, prompt=moved(maps.prompt), negative=moved(maps.negative))


def run_final(job: FinalJob) -> Message:
    """A kept draft's latents through the model's VAE ("Final"): the image a run with the VAE would have made, saved
    with the PNG it would have written. Nothing is sampled; an inpainting is pasted back over its picture again."""
    started = time.perf_counter()
    draft, model = job.draft, job.model
    request = replace(draft.request, decoder="vae")
    try:
        with torch.no_grad():
            plan = inpaint_plan(request, model.diffusion)    # reads the picture and mask files again
            images = decode(model.diffusion, draft.latents.to(model.diffusion.device))
            if plan is not None:
                images = [plan.finish(image) for image in images]
    except LatentDeskError as e:
        return Failed(job.id, f"The draft could not be decoded with the VAE: {e}")
    except (torch.OutOfMemoryError, MemoryError):
        return Failed(job.id, "Out of memory while decoding the draft with the VAE. Close other programs and try again.")
    except Exception as e:
        log.exception("final decode failed")
        return Failed(job.id, f"Decoding the draft failed unexpectedly ({type(e).__name__}: {e}).")
    infotext = to_infotext(request, model.diffusion.name, model.hash, f"Latent Desk {__version__}", draft.guidances,
                           precision=draft.precision, lora_hashes=draft.loras, ti_hashes=draft.embeddings)
    previews = tuple(pil_to_qimage(image) for image in images)
    outcomes, save_error = save_images(images, previews, [infotext] * len(images), job.output_dir,
                                       plan.mask if plan is not None else None)
    paths, unsaved = split_outcomes(outcomes)
    return Finished(job.id, request, previews, paths, (), time.perf_counter() - started, 0, save_error,
                    unsaved=unsaved, attention=(draft.attention,) * len(images))


def save_images(images, previews, infotexts, output_dir, mask, save: bool = True) -> tuple[list, str | None]:
    """Each image to a PNG (not for Live runs, `save` False): its Path, or an `Unsaved` that keeps it in the window
    when it was not written; and the message for the user when some were not."""
    outcomes, errors = [], []
    for image, preview, infotext in zip(images, previews, infotexts, strict=True):
        if not save:
            outcomes.append(Unsaved(image, preview, infotext, output_dir, mask))
            continue
        try:        # every image gets its own try: one that cannot be written must not cost the others
            outcomes.append(save_png_and_mask(image, output_dir, infotext, mask))
        except Exception as e:      # noqa: BLE001 - LatentDeskError for OSError, anything else logged too
            if not isinstance(e, LatentDeskError):
                log.exception("saving image failed")
            errors.append(str(e))
            outcomes.append(Unsaved(image, preview, infotext, output_dir, mask))
    save_error = None
    if errors:
        save_error = errors[0] if len(errors) == len(images) else \
            f"{len(errors)} of {len(images)} images could not be saved: {errors[0]}"
    return outcomes, save_error


def split_outcomes(outcomes: list, *per_image: list) -> tuple[tuple, ...]:
    """(paths, unsaved, *per_image) as Finished holds them: each per-image list (drafts, word maps) in the order of
    the paths, then the unsaved."""
    saved = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, Unsaved)]
    kept = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Unsaved)]
    return (tuple(outcomes[i] for i in saved), tuple(outcomes[i] for i in kept),
            *(tuple(values[i] for i in saved + kept) for values in per_image))
