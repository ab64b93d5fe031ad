"""`latentdesk generate ... --attention-maps DIR [--attention-steps SPEC]`: where each word was listened to.

    add_attention_arguments(parser)            the two options, in their own group of `generate`'s help
    attention_plan(args) -> AttentionPlan | None   checked before the model loads (None: no maps asked for)
    AttentionPlan.settings(request) -> AttentionSettings   the steps, checked against the run's own count
    AttentionPlan.save(maps, image, written, images) -> folder  the maps of one image, beside none of the others

One image: its maps go into DIR itself. Several (--batch, --prompt-file): image NNNNN.png's go into
DIR/NNNNN/, named after the image they belong to, as --out-dir numbers images (00000, 00001, ...).
The files are core/attention_maps.py's: NN-word.png, overlay-NN-word.png and words.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.atomic_files import writable_folder
from core.attention_maps import AttentionMaps, AttentionSettings, save_attention_maps
from core.errors import LatentDeskError
from core.request import GenerationRequest
from core.sampling.schedules import img2img_start

# "7" or "0-9", 0-based, both ends included; 9 digits at most, so int() never meets a 5,000-digit "step"
_RANGE = re.compile(r"\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?")


def add_attention_arguments(parser) -> None:
    maps = parser.add_argument_group("attention maps", "where in the picture each word of the prompt was "
                                     "attended (core/attention_maps.py); off by default, costing nothing then")
    maps.add_argument("--attention-maps", metavar="DIR",
                      help="write each prompt word's map into DIR: NN-word.png (greyscale, image size), "
                           "overlay-NN-word.png (over the image) and words.json; several images: DIR/00000/, "
                           "DIR/00001/, ... named as the images are")
    maps.add_argument("--attention-steps", metavar="SPEC",
                      help="the sampler steps whose attention is summed, counted from 0: e.g. 0-9 or 5,6,7 "
                           "(default: all)")


@dataclass(frozen=True)
class AttentionPlan:
    folder: Path
    ranges: tuple[tuple[int, int], ...] | None    # (first, last) steps, both included; None: every step

    def settings(self, request: GenerationRequest) -> AttentionSettings:
        """The steps to sum, checked against the steps this request's run takes (img2img runs fewer)."""
        if self.ranges is None:
            return AttentionSettings()
        total = run_steps(request)
        last = max(end for _, end in self.ranges)
        if last >= total:
            numbered = f"numbered 0 to {total - 1}" if total else "none at all"
            raise LatentDeskError(f"--attention-steps: step {last} is past the run, which takes {total} sampler "
                                  f"step{'s' if total != 1 else ''} ({numbered})")
        return AttentionSettings(frozenset(s for start, end in self.ranges for s in range(start, end + 1)))

    def save(self, maps: AttentionMaps, image, written: Path, images: int) -> Path:
        """Write one image's maps; the folder they went into."""
        folder = self.folder if images == 1 else self.folder / Path(written).stem
        save_attention_maps(maps, image, folder)
        return folder


def attention_plan(args) -> AttentionPlan | None:
    """--attention-maps and --attention-steps checked (the folder made) before anything slow starts."""
    if args.attention_maps is None:
        if args.attention_steps is not None:
            raise LatentDeskError("--attention-steps picks the steps of --attention-maps DIR: give that too")
        return None
    folder = Path(args.attention_maps)
    if folder.exists() and not folder.is_dir():
        raise LatentDeskError(f"--attention-maps {folder} is a file, not a folder")
    ranges = None if args.attention_steps is None else step_ranges(args.attention_steps)   # before the folder is made
    return AttentionPlan(writable_folder(folder, "--attention-maps"), ranges)


def step_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """"0-9,12" -> ((0, 9), (12, 12)). Only the ranges are kept: a step past the run is refused against the
    run's own count (AttentionPlan.settings) before any set of steps is made."""
    ranges = []
    for part in spec.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise LatentDeskError(f"--attention-steps {spec!r}: {part.strip()!r} is not a step or a range of steps; "
                                  "write steps counted from 0, e.g. 0-9 or 5,6,7")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise LatentDeskError(f"--attention-steps {spec!r}: the range {start}-{end} runs backwards")
        ranges.append((start, end))
    return tuple(ranges)


def run_steps(request: GenerationRequest) -> int:
    """The sampler steps generate() runs for `request`: img2img (and inpainting) join the schedule late."""
    if request.is_img2img:
        return request.steps - img2img_start(request.steps, request.strength)
    return request.steps
