"""How much of each object an autoencoder keeps: encode, decode, and read the shape back (issue #26).

    python scripts/autoencoder_shapes_kept.py MODEL_OR_AUTOENCODER [...] [--n 200] [--json FILE]

MODEL_OR_AUTOENCODER: a built-in-style model file ("builtin" for the installed one), or a stage-1
autoencoder (its file or its `train autoencoder --out` folder). For each object size, N renders of the
shapes world are encoded (the posterior's mean), decoded, and read by the analytic checker
(core/shapes/checker.py): the share whose shape it still reads right, and the PSNR. No diffusion model
can draw a shape more reliably than its decoder can, so this is the ceiling for the small-shapes bar.
The renders are the same for every file given (scenes drawn from a fixed seed until N of each size).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENE_SEED = 99
BATCH = 50


def load_vae(spec: str):
    from core.train.autoencoder import AUTOENCODER_FILE, load_autoencoder
    path = Path(spec)
    if path.is_dir() or path.name == AUTOENCODER_FILE:
        return load_autoencoder(path).float()
    from core.loading.checkpoint import load_model
    from core.resources import resolve_model
    return load_model(resolve_model(spec)).vae.float()


def scenes_of_size(size: str, n: int) -> list:
    import numpy as np

    from core.shapes.world import sample_scene
    rng = np.random.default_rng(SCENE_SEED)
    found = []
    while len(found) < n:
        scene = sample_scene(rng)
        if scene.size == size:
            found.append(scene)
    return found


def kept(vae, scenes) -> dict:
    import numpy as np
    import torch

    from core.shapes.checker import measure, score
    from core.shapes.world import render_array
    right, squared = 0, 0.0
    for start in range(0, len(scenes), BATCH):
        part = scenes[start:start + BATCH]
        pixels = np.stack([render_array(s) for s in part]).transpose(0, 3, 1, 2).astype(np.float32)
        x = torch.from_numpy(pixels / 127.5 - 1)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).mode()).clamp(-1, 1)
        squared += ((y - x) ** 2).mean(dim=(1, 2, 3)).sum().item()
        images = ((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        right += sum(score(measure(image), scene, frozenset({"shape"}))["shape"] for image, scene in zip(images, part,
                                                                                                      strict=True))
    return {"renders": len(scenes), "shape_kept": right / len(scenes),
            "psnr_db": 10 * math.log10(4 / (squared / len(scenes)))}   # pixels in [-1, 1]: peak-to-peak 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--n", type=int, default=200, help="renders per object size")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    from core.shapes.world import SIZES
    results = {}
    for spec in args.models:
        vae = load_vae(spec)
        results[spec] = {"latent_channels": vae.config.z_channels,
                         **{size: kept(vae, scenes_of_size(size, args.n)) for size in SIZES}}
        row = "  ".join(f"{size} {r['shape_kept'] * 100:5.1f} % / {r['psnr_db']:.2f} dB"
                        for size, r in results[spec].items() if size in SIZES)
        print(f"{spec} ({vae.config.z_channels} channels): shape kept / PSNR  {row}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"scene_seed": SCENE_SEED, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
