"""The flags and data choices the `latentdesk train` commands share (app/cli/train.py, train_preview.py)."""

from __future__ import annotations

import argparse

from core.errors import LatentDeskError
from core.train.recipe import BUILTIN_RECIPE as R


def add_data_args(parser) -> None:
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="a folder of images with same-name .txt captions")
    data.add_argument("--shapes", action="store_true", help="the synthetic captioned-shapes world")
    parser.add_argument("--shapes-items", type=int, help="how many shapes scenes to draw from (default: recipe's)")
    parser.add_argument("--size", type=int, default=128, help="--data images are scaled and cropped to this square")


def add_run_args(parser, settings) -> None:
    parser.add_argument("--out", required=True, help="output folder (checkpoints, loss.jsonl, results)")
    parser.add_argument("--steps", type=int, default=settings.steps)
    parser.add_argument("--batch-size", type=int, default=settings.batch_size, help="global batch (all processes)")
    parser.add_argument("--lr", type=float, default=settings.lr)
    parser.add_argument("--seed", type=int, default=R.seed)
    parser.add_argument("--warmup-steps", type=int, default=settings.warmup_steps)
    parser.add_argument("--lr-decay-until", type=int,
                        help="cosine learning-rate decay ends at this step (default: --steps; 0 = constant lr)")
    parser.add_argument("--ema-decay", type=float, default=settings.ema_decay, help="0 = no EMA")
    parser.add_argument("--ema-restart", type=int, default=settings.ema_restart, metavar="STEP",
                        help="the EMA starts over at this step (0 = never), e.g. where a fine-tune begins")
    parser.add_argument("--checkpoint-every", type=int, default=settings.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=settings.log_every)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=settings.bf16,
                        help="autocast forward passes to bfloat16 (fast on CPUs with AMX/AVX-512 BF16 and on GPUs; on a "
                             "CPU where it is not faster the steps stay float32)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def settings_from(args, base):
    from core.train.settings import TrainSettings
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup_steps=args.warmup_steps,
                         lr_decay_until=args.steps if args.lr_decay_until is None else args.lr_decay_until,
                         lr_floor=base.lr_floor, weight_decay=base.weight_decay, grad_clip=base.grad_clip,
                         ema_decay=args.ema_decay, ema_restart=args.ema_restart, bf16=args.bf16,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every)


def dataset_from(args, default_items: int, split: str = "train"):
    """(dataset, name for checkpoints) of --data / --shapes."""
    from core.train.data import CaptionedFolder, shapes
    if args.data:
        folder = CaptionedFolder(args.data, args.size)
        return folder, f"folder {folder.path.resolve()} at {args.size}px ({len(folder)} images)"
    items = args.shapes_items or default_items
    phrasings = getattr(args, "shapes_captions", 1)
    if phrasings < 1:
        raise LatentDeskError(f"--shapes-captions must be at least 1, not {phrasings}")
    style = getattr(args, "caption_style", "templates")
    name = shapes_name(args.seed, items, phrasings, style)
    return shapes(args.seed, items, split, phrasings, style), name


def shapes_name(seed: int, items: int, phrasings: int = 1, style: str = "templates") -> str:
    """The data's name in checkpoints and the latent cache's fingerprint (one phrasing, templates: as before
    either existed)."""
    return (f"shapes seed {seed}, {items} items" + (f", {phrasings} captions each" if phrasings > 1 else "")
            + (f", {style} captions" if style != "templates" else ""))
