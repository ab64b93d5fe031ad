"""`latentdesk train ...`: the two training stages on the command line.

    latentdesk train autoencoder (--data DIR | --shapes) --out DIR [--steps N] [--batch-size B] [--lr LR] [--seed S] ...
    latentdesk train diffusion --autoencoder FILE|DIR (--data DIR | --shapes) --out DIR [--from MODEL] [...]
    latentdesk train builtin --out DIR [--recipe v1|v2]   # both stages, then DIR/builtin.safetensors
    latentdesk train snapshot RUN --autoencoder FILE|DIR --out FILE   # an unfinished stage-2 run's model
    latentdesk train preview --model M (--data DIR | --shapes) --out DIR [--install [--force]]   # M's preview decoder

Every command resumes from the checkpoint in its --out folder when there is one: run
the same command again after an interruption. Defaults are the built-in recipe's.
Several processes: `torchrun --nproc-per-node N -m app.cli.train train ...` (DDP).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP (libgomp): an idle thread spins ~10k times, not libgomp's 300k, before it
# sleeps. On the 2-core machine shared with other PyTorch jobs, long spins against a preempted partner
# made stage-1 steps 8x slower (10.5 s vs 0.65 s); 10k spins cost nothing measurable when the machine is
# idle (stage 2: 644 vs 653 ms a step). OMP_WAIT_POLICY=PASSIVE is better still when shared, but 16-37 %
# slower when not.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from app.cli.train_args import add_data_args, add_run_args, dataset_from, settings_from, shapes_name
from app.cli.train_preview import run_train_preview
from core.atomic_files import check_can_make
from core.errors import LatentDeskError
from core.nets.preview_decoder import PreviewDecoderConfig
from core.shapes.dataset import CAPTION_SOURCES
from core.train.preview import PREVIEW_EVAL_ITEMS, PREVIEW_ITEMS, PREVIEW_TRAIN
from core.train.recipe import BUILTIN_RECIPE, RECIPES, SHIPPED_RECIPE, BuiltinRecipe

R = BUILTIN_RECIPE
BUILTIN_FILE = "builtin.safetensors"


def add_train_commands(subparsers) -> None:
    """Add `train autoencoder|diffusion|builtin` to a `latentdesk` sub-command parser; each sets `handler`."""
    train = subparsers.add_parser("train", help="train a latent diffusion model (autoencoder, then diffusion)")
    stages = train.add_subparsers(dest="stage", required=True)

    ae = stages.add_parser("autoencoder", help="stage 1: the autoencoder (perceptual compression)")
    add_data_args(ae)
    add_run_args(ae, R.vae_train)
    ae.add_argument("--channels", type=int, default=R.vae.base_channels, help="width of the first level")
    ae.add_argument("--channel-mult", type=_ints, default=R.vae.channel_mult,
                    help="width multiple per level, e.g. 1,2,4,4 (4 levels = 1/8 size latents)")
    ae.add_argument("--res-blocks", type=int, default=R.vae.num_res_blocks)
    ae.add_argument("--latent-channels", type=int, default=R.vae.z_channels,
                    help="channels of the latents (SD: 4); more keep more of a small object")
    ae.add_argument("--kl-weight", type=float, default=R.vae_loss.kl_weight)
    ae.add_argument("--crop", type=int, default=R.vae_loss.crop, help="train on random crops this size (0 = whole)")
    ae.add_argument("--edge-weight", type=float, default=R.vae_loss.edge_weight,
                    help="weight of the loss on image gradients, which makes a blurred edge cost (0 = off)")
    ae.add_argument("--adversarial-weight", type=float, default=R.vae_loss.adversarial_weight,
                    help="weight of a patch critic trained against the decoder, as in LDM's stage 1 (0 = off)")
    ae.add_argument("--finetune-start", "--adversarial-start", type=int, default=R.vae_loss.finetune_start,
                    metavar="STEP", help="the step a fine-tune for detail starts: the critic's term, edge focus "
                    "and detail crops apply from here on")
    ae.add_argument("--edge-focus", type=float, default=R.vae_loss.edge_focus,
                    help="in the fine-tune, weigh the loss near the originals' edges this much more (0 = off)")
    ae.add_argument("--detail-crops", action="store_true",
                    help="in the fine-tune, place each crop around the image's edges (its object)")
    ae.add_argument("--freeze-encoder", action="store_true", help="the fine-tune trains the decoder alone")
    ae.set_defaults(handler=out_folder_first(run_train_autoencoder))

    df = stages.add_parser("diffusion", help="stage 2: UNet + text encoder on the autoencoder's latents")
    df.add_argument("--autoencoder", required=True, help="autoencoder.safetensors from stage 1 (or its folder)")
    add_data_args(df)
    add_run_args(df, R.diffusion_train)
    df.add_argument("--model-channels", type=int, default=R.unet.model_channels)
    df.add_argument("--channel-mult", type=_ints, default=R.unet.channel_mult)
    df.add_argument("--res-blocks", type=int, default=R.unet.num_res_blocks)
    df.add_argument("--attention", type=_ints, default=R.unet.transformer_depth,
                    help="transformer blocks per level, 0 = none, e.g. 0,1,1")
    df.add_argument("--coord-channels", action=argparse.BooleanOptionalAction, default=R.unet.coord_channels,
                    help="give the UNet each pixel's x, y as two more input channels (absolute position)")
    df.add_argument("--pooled-text", action=argparse.BooleanOptionalAction,
                    default=R.unet.adm_in_channels is not None,
                    help="also condition every ResBlock on the caption's pooled embedding (added to the timestep "
                         "embedding), besides cross-attention")
    df.add_argument("--caption-style", choices=CAPTION_SOURCES, default="templates",
                    help="--shapes captions: the shipped model's templates, the caption grammar (people's "
                         "phrasings, synonyms; held-out structures never drawn), or each phrasing from either")
    df.add_argument("--heads", type=int, default=R.unet.num_heads[0], help="attention heads in the UNet")
    df.add_argument("--text-width", type=int, default=R.text.hidden_size)
    df.add_argument("--text-layers", type=int, default=R.text.num_hidden_layers)
    df.add_argument("--text-heads", type=int, default=R.text.num_attention_heads)
    df.add_argument("--text-lr-scale", type=float, default=R.text_lr_scale,
                    help="the text encoder's learning rate as a multiple of --lr")
    df.add_argument("--shapes-captions", type=int, default=R.captions_per_item, metavar="K",
                    help="--shapes: phrase each scene K ways, one picked at random each time it is drawn")
    df.add_argument("--attribute-loss", type=float, default=R.attribute_loss, metavar="WEIGHT",
                    help="the text encoder also learns to name each caption's attributes (--shapes only; 0 = off)")
    df.add_argument("--caption-dropout", type=float, default=R.caption_dropout,
                    help="share of samples trained with the empty caption (for classifier-free guidance)")
    df.add_argument("--guidance", type=float, default=R.defaults.guidance, help="the model's default guidance")
    df.add_argument("--sampler", default=R.defaults.sampler, help="the model's default sampler")
    df.add_argument("--prediction", choices=("epsilon", "v"), default=R.target.prediction,
                    help="what the UNet learns to predict: the noise (SD 1.x) or v (SD 2.x 768)")
    df.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction, default=R.target.zero_terminal_snr,
                    help="train on the noise schedule that ends in pure noise (needs --prediction v); "
                         "without it small pictures take their colours from the starting noise")
    df.add_argument("--snr-weight", type=_optional_floats, default=R.target.snr_weight_range, metavar="LOW,HIGH",
                    help="weigh each sample's x0 error by its SNR clamped to [LOW, HIGH] (min-SNR with a floor); "
                         "'off': the plain loss")
    df.add_argument("--offset-noise", type=float, default=R.target.offset_noise, metavar="STD",
                    help="add a per-channel constant of this std to the training noise (0 = off)")
    df.add_argument("--pyramid-noise", type=float, default=R.target.pyramid_noise, metavar="DISCOUNT",
                    help="add coarser noise with weights DISCOUNT, DISCOUNT^2, ... to the training noise (0 = off)")
    df.add_argument("--export-dtype", choices=("fp16", "fp32"), default=R.export_dtype)
    df.add_argument("--from", dest="start_from", metavar="MODEL",
                    help="fine-tune this model's UNet and text encoder (e.g. builtin, on new captions) instead of "
                         "training fresh ones; the flags above must describe its networks, and --autoencoder must "
                         "encode as its own does")
    df.set_defaults(handler=out_folder_first(run_train_diffusion))

    snap = stages.add_parser("snapshot", help="export the model of an unfinished stage-2 run (its last checkpoint)")
    snap.add_argument("run", help="the stage-2 --out folder")
    snap.add_argument("--autoencoder", required=True, help="the stage-1 autoencoder the run was trained on")
    snap.add_argument("--out", required=True, help="the .safetensors file to write")
    snap.add_argument("--guidance", type=float, default=R.defaults.guidance)
    snap.add_argument("--sampler", default=R.defaults.sampler)
    snap.add_argument("--size", type=int, default=R.defaults.size)
    snap.set_defaults(handler=run_train_snapshot)

    pv = stages.add_parser("preview", help="a model's tiny preview decoder, trained to imitate its VAE decoder")
    pv.add_argument("--model", default="builtin", help="the model whose VAE it imitates: builtin, a file or a folder")
    add_data_args(pv)
    add_run_args(pv, PREVIEW_TRAIN)
    pv.add_argument("--items", type=int, default=PREVIEW_ITEMS, help="training images (each encoded and decoded once)")
    pv.add_argument("--eval-items", type=int, default=PREVIEW_EVAL_ITEMS, help="held-out images the PSNR is measured on")
    pv.add_argument("--width", type=int, default=PreviewDecoderConfig.width, help="channels of its hidden layers")
    pv.add_argument("--blocks", type=int, default=PreviewDecoderConfig.blocks, help="residual blocks per resolution")
    pv.add_argument("--install", action="store_true",
                    help="also put the decoder beside the model (<model>.preview.safetensors), where the app finds "
                         "it; refused when one is there already (the built-in model ships one) unless --force")
    pv.add_argument("--force", action="store_true", help="with --install: replace the decoder already there")
    pv.set_defaults(handler=out_folder_first(run_train_preview))

    builtin = stages.add_parser("builtin", help="reproduce the shipped built-in model (both stages, fixed recipe)")
    builtin.add_argument("--out", required=True, help="working folder; rerun the same command to resume")
    builtin.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    builtin.add_argument("--recipe", choices=sorted(RECIPES), default=SHIPPED_RECIPE,
                         help=f"which version's recipe (default {SHIPPED_RECIPE}: the shipped model's)")
    builtin.add_argument("--autoencoder-from", metavar="MODEL",
                         help="start stage 1 at the recipe's fine-tune from this model's autoencoder (e.g. the "
                              "shipped built-in model) instead of from scratch: minutes, not 40, and the latents "
                              "stay that model's, since the fine-tune trains the decoder alone")
    builtin.set_defaults(handler=out_folder_first(run_train_builtin))


def out_folder_first(handler):
    """`handler` once it is clear that --out can be made and written in: a run would otherwise find out at its
    first checkpoint or its latent cache, minutes in."""
    def run(args) -> int:
        check_can_make(Path(args.out), "--out")
        return handler(args)
    return run


def groups_for(channels: int) -> int:
    """GroupNorm groups for a network `channels` wide at its first level: 4 channels a group, at most 32.

    That is SD's VAE (128 wide, 32 groups). One channel a group would be instance norm, which
    wipes out a flat region's colour: the decoder could not tell a red background from a blue one.
    """
    return max(1, min(32, channels // 4))


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, like 1,2,4; got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, like 0.1,5; got {text!r}") from None


def _optional_floats(text: str) -> tuple[float, ...] | None:
    return None if text.strip().lower() in ("off", "none") else _floats(text)


def run_train_autoencoder(args) -> int:
    from core.nets.vae import VAEConfig
    from core.train.autoencoder import AutoencoderLoss, AutoencoderStage, train_autoencoder
    from core.train.data import shapes
    from core.train.distributed import Distributed

    processes = Distributed.from_env(args.device)
    dataset, name = dataset_from(args, R.vae_items)
    config = VAEConfig(base_channels=args.channels, channel_mult=args.channel_mult, num_res_blocks=args.res_blocks,
                       norm_groups=groups_for(args.channels), z_channels=args.latent_channels, scale_factor=1.0)
    loss = AutoencoderLoss(args.kl_weight, R.vae_loss.mse_weight, args.crop, edge_weight=args.edge_weight,
                           adversarial_weight=args.adversarial_weight, finetune_start=args.finetune_start,
                           edge_focus=args.edge_focus, detail_crops=args.detail_crops,
                           freeze_encoder=args.freeze_encoder)
    stage = AutoencoderStage(config, dataset, name, loss, args.seed)
    # Shapes: PSNR on held-out renders. A user's folder has no held-out part: PSNR on its first images.
    eval_dataset = shapes(args.seed, R.eval_images, "heldout") if args.shapes else dataset
    report = train_autoencoder(stage, settings_from(args, R.vae_train), args.out, eval_dataset,
                               scale_images=R.scale_images, eval_images=R.eval_images, processes=processes)
    if processes.is_main:
        print(f"autoencoder: PSNR {report['psnr_db']:.2f} dB, scale factor {report['scale_factor']:.5f} -> "
              f"{Path(args.out) / 'autoencoder.safetensors'}")
    return 0


def run_train_diffusion(args) -> int:
    from core.nets.unet import UNetConfig
    from core.train.autoencoder import autoencoder_id, load_autoencoder
    from core.train.diffusion import NoiseTarget, TextEncoderConfig, train_diffusion
    from core.train.distributed import Distributed
    from core.train.export import ModelDefaults

    processes = Distributed.from_env(args.device)
    vae = load_autoencoder(args.autoencoder)
    dataset, name = dataset_from(args, R.diffusion_items)
    levels = len(args.channel_mult)
    if len(args.attention) != levels:
        raise LatentDeskError(f"--attention needs one number per level ({levels}, as --channel-mult), "
                              f"not {','.join(map(str, args.attention))}")
    unet = UNetConfig(model_channels=args.model_channels, channel_mult=args.channel_mult, num_res_blocks=args.res_blocks,
                      transformer_depth=args.attention, transformer_depth_middle=1, num_heads=(args.heads,) * levels,
                      context_dim=args.text_width, norm_groups=groups_for(args.model_channels),
                      coord_channels=args.coord_channels, adm_in_channels=args.text_width if args.pooled_text else None)
    text = TextEncoderConfig(hidden_size=args.text_width, intermediate_size=4 * args.text_width,
                             num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads)
    defaults = ModelDefaults(size=args.size, guidance=args.guidance, sampler=args.sampler)
    target = NoiseTarget(args.prediction, args.zero_terminal_snr,
                         tuple(args.snr_weight) if args.snr_weight is not None else None,
                         args.offset_noise, args.pyramid_noise)
    path = train_diffusion(vae, autoencoder_id(args.autoencoder), dataset, name, args.out, unet, text,
                           settings_from(args, R.diffusion_train), caption_dropout=args.caption_dropout,
                           defaults=defaults, target=target, text_lr_scale=args.text_lr_scale,
                           attribute_loss=args.attribute_loss if args.shapes else 0.0,
                           export_dtype=args.export_dtype, processes=processes,
                           start_from=_networks_to_finetune(args.start_from, target, unet) if args.start_from else None)
    if path is not None:
        print(f"diffusion: model written to {path}")
    return 0


def _networks_to_finetune(name: str, target, unet_config):
    """(UNet, text model, name with its hash) of the model `train diffusion --from` fine-tunes; refused before
    the latent cache is made (minutes) when the flags describe other networks."""
    from core.loading.checkpoint import load_model
    from core.resources import resolve_model
    from core.train.autoencoder import autoencoder_id
    path = resolve_model(name)
    model = load_model(path)
    if len(model.text_encoder.models) != 1:
        raise LatentDeskError(f"{path}: it has {len(model.text_encoder.models)} text encoders; a run trains one")
    if model.prediction != target.prediction:
        raise LatentDeskError(f"{path}: it predicts {model.prediction}, this run trains {target.prediction} "
                              "(--prediction)")
    if model.unet.config != unet_config:
        differ = [f"{k} {getattr(model.unet.config, k)!r} (flags: {getattr(unet_config, k)!r})"
                  for k in asdict(unet_config) if getattr(model.unet.config, k) != getattr(unet_config, k)]
        raise LatentDeskError(f"{path}: its UNet is not the one these flags describe: {'; '.join(differ)}")
    # The file's hash ties a resumed run to the same start; a folder (diffusers layout) goes by its name.
    return model.unet, model.text_encoder.models[0], f"{path.name} ({autoencoder_id(path) if path.is_file() else path})"


def run_train_snapshot(args) -> int:
    from core.train.autoencoder import autoencoder_id, load_autoencoder
    from core.train.export import ModelDefaults
    from core.train.snapshot import export_snapshot

    defaults = ModelDefaults(size=args.size, guidance=args.guidance, sampler=args.sampler)
    path, step = export_snapshot(args.run, load_autoencoder(args.autoencoder), autoencoder_id(args.autoencoder),
                                 args.out, defaults)
    print(f"the model at step {step} (EMA weights) -> {path}")
    return 0


def run_train_builtin(args, recipe: BuiltinRecipe | None = None) -> int:
    """Stage 1 into OUT/autoencoder, stage 2 into OUT/diffusion, the model to OUT/builtin.safetensors."""
    recipe = recipe or RECIPES[getattr(args, "recipe", SHIPPED_RECIPE)]
    from core.atomic_files import write_json
    from core.train.autoencoder import (
        AUTOENCODER_FILE,
        AutoencoderStage,
        autoencoder_id,
        load_autoencoder,
        train_autoencoder,
    )
    from core.train.data import shapes
    from core.train.diffusion import train_diffusion
    from core.train.distributed import Distributed

    processes = Distributed.from_env(args.device)
    out = Path(args.out)
    started = time.perf_counter()
    first, second = out / "autoencoder", out / "diffusion"
    seed = recipe.seed
    if not (first / AUTOENCODER_FILE).is_file():
        stage = AutoencoderStage(recipe.vae, shapes(seed, recipe.vae_items), shapes_name(seed, recipe.vae_items),
                                 recipe.vae_loss, seed)
        first_step = 0
        if getattr(args, "autoencoder_from", None):
            from core.loading.checkpoint import load_model
            source = Path(args.autoencoder_from)
            first_step = stage.start_from(load_model(source).vae, f"{source.name} ({autoencoder_id(source)})")
        train_autoencoder(stage, recipe.vae_train, first, shapes(seed, recipe.eval_images, "heldout"),
                          scale_images=recipe.scale_images, eval_images=recipe.eval_images, processes=processes,
                          first_step=first_step)
    vae = load_autoencoder(first)
    items, phrasings, style = recipe.diffusion_items, recipe.captions_per_item, recipe.caption_style
    path = train_diffusion(vae, autoencoder_id(first), shapes(seed, items, "train", phrasings, style),
                           shapes_name(seed, items, phrasings, style), second, recipe.unet, recipe.text,
                           recipe.diffusion_train, caption_dropout=recipe.caption_dropout, defaults=recipe.defaults,
                           target=recipe.target, text_lr_scale=recipe.text_lr_scale,
                           attribute_loss=recipe.attribute_loss, export_dtype=recipe.export_dtype, export_path=out / BUILTIN_FILE, processes=processes)
    if processes.is_main:
        reports = {name: json.loads((out / name / f"{name}.json").read_text()) for name in ("autoencoder", "diffusion")}
        write_json(out / "builtin.json", {"model": str(path), "size_bytes": path.stat().st_size, **reports,
                                          "this_run_seconds": round(time.perf_counter() - started),
                                          "recipe": asdict(recipe)})
        print(f"built-in model written to {path} ({path.stat().st_size / 1e6:.1f} MB); autoencoder PSNR "
              f"{reports['autoencoder']['psnr_db']:.2f} dB; report in {out / 'builtin.json'}")
        # The window's previews need the tiny decoder too; it is trained on the finished model, so it is a next step.
        print(f"its preview decoder (about 11 min on a 2-core CPU): latentdesk train preview --model {path} --shapes "
              f"--out {out / 'preview'} --install")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m app.cli.train train ...`: the same commands as `latentdesk train`, for `torchrun -m`."""
    parser = argparse.ArgumentParser(prog="latentdesk", description="Train latent diffusion models.")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except LatentDeskError as e:
        print(f"latentdesk: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentdesk: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
