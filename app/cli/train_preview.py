"""`latentdesk train preview`: a model's tiny preview decoder, trained to imitate its VAE's decoder."""

from __future__ import annotations

import os

from app.cli.train_args import dataset_from, settings_from, shapes_name
from core.errors import LatentDeskError
from core.nets.preview_decoder import MAX_SIZES, PreviewDecoderConfig
from core.train.preview import PREVIEW_TRAIN


def run_train_preview(args) -> int:
    import shutil

    from core.loading.checkpoint import load_model
    from core.loading.preview_decoders import preview_decoder_path
    from core.metadata.hashing import model_hash
    from core.resources import resolve_model
    from core.train.data import shapes
    from core.train.distributed import Distributed
    from core.train.preview import train_preview_decoder

    model_path = resolve_model(args.model)
    target = preview_decoder_path(model_path)
    if args.force and not args.install:
        raise LatentDeskError("--force only goes with --install (it lets --install replace a decoder)")
    if args.install and not args.force and target.exists():     # refused now, not after the training
        raise LatentDeskError(f"{target}: the model has a preview decoder already; --install replaces it only "
                              "with --force (or leave --install out and copy the trained file yourself)")
    _check_preview_size(args)
    device = Distributed.from_env(args.device).device   # one process; this picks the GPU or the CPU threads
    vae = load_model(model_path, device=device).vae.requires_grad_(False)
    items = (args.shapes_items or args.items) if args.shapes else args.items
    if args.shapes:
        dataset, name = shapes(args.seed, items), shapes_name(args.seed, items)
        eval_dataset = shapes(args.seed, args.eval_items, "heldout")
    else:   # a folder has no held-out part: its last images are held out, the first ones trained on
        folder, name = dataset_from(args, args.items)
        if len(folder) < 2:
            raise LatentDeskError(f"{args.data}: a preview decoder needs at least 2 images, it has {len(folder)}")
        held = max(1, min(args.eval_items, len(folder) // 5))
        dataset = _subset(folder, range(len(folder) - held))
        eval_dataset = _subset(folder, range(len(folder) - held, len(folder)))
    try:
        config = PreviewDecoderConfig(vae.config.z_channels, vae.config.downsample_factor, args.width, args.blocks)
    except ValueError as e:   # the sizes were checked above: what is left is the model's VAE
        raise LatentDeskError(f"{model_path}: no preview decoder fits this model's VAE ({e})") from None
    report = train_preview_decoder(vae, f"{model_path.name} {model_hash(model_path)}", dataset, eval_dataset, name,
                                   args.out, config, settings_from(args, PREVIEW_TRAIN), items=items,
                                   eval_items=args.eval_items)
    psnr = report["psnr_vs_vae_db"]
    print(f"preview decoder: {psnr['all']:.2f} dB against the VAE on {report['eval_items']} held-out images "
          f"({', '.join(f'{k} {v:.1f}' for k, v in psnr.items() if k != 'all')}) -> {report['path']}")
    if args.install:
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(report["path"], tmp)
        os.replace(tmp, target)
        print(f"installed beside the model: {target}")
    return 0


def _check_preview_size(args) -> None:
    """--width and --blocks within what a preview decoder may be (core/nets/preview_decoder.py): refused
    before the model is loaded and its images encoded, with the flag's name rather than a traceback."""
    for name in ("width", "blocks"):
        value, high = getattr(args, name), MAX_SIZES[name]
        if not 1 <= value <= high:
            raise LatentDeskError(f"--{name} must be from 1 to {high} (a preview decoder is tiny), not {value}")


def _subset(dataset, indices):
    import torch
    return torch.utils.data.Subset(dataset, list(indices))
