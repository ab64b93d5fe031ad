"""`latentdesk` on the command line.

    latentdesk inspect MODEL [--prediction epsilon|v] [--json]

Exit status 0 on success, 2 with a one-line reason on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import LatentDeskError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentdesk", description="Latent diffusion on your own machine.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="load a model and say what it is")
    inspect.add_argument("model", help="a .safetensors checkpoint or a diffusers model folder")
    inspect.add_argument("--prediction", choices=("epsilon", "v"), help="override the detected prediction type")
    inspect.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    try:
        return {"inspect": run_inspect}[args.command](args)
    except LatentDeskError as e:
        print(f"latentdesk: {e}", file=sys.stderr)
        return 2


def run_inspect(args) -> int:
    from core.checkpoint import load_model

    model = load_model(args.model, prediction=args.prediction)
    report = {
        "family": model.family.name,
        "title": model.family.title,
        "prediction": model.prediction,
        "prediction_source": model.prediction_source,
        "latent_scale": model.vae.config.scale_factor,
        "parameters": {name: sum(p.numel() for p in net.parameters())
                       for name, net in (("unet", model.unet), ("vae", model.vae), ("text", model.text_encoder))},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{model.name}: {report['title']}, predicts {report['prediction']} "
              f"({report['prediction_source']}), latent scale {report['latent_scale']}")
        for name, count in report["parameters"].items():
            print(f"  {name:5s} {count / 1e6:8.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
