"""docs/images/attention-maps.png: the built-in model's picture and some of its words' attention overlays.

    python scripts/attention_figure.py [--out docs/images/attention-maps.png] [--seed 1234]

Runs the command line as a user would (`latentdesk generate --attention-maps DIR`) into a scratch folder,
then lays the image and the overlays of the words in WORDS side by side, each labelled with its word and
its share of the attention, and under each overlay the word's greyscale map (white = its peak), enlarged
SCALE times (nearest neighbour, so the 128 px pixels stay visible).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle in the top left corner on a blue background"
WORDS = ("red", "circle", "top", "left", "blue", "background")
SCALE = 2
LABEL = 18     # px of label strip under each panel
GAP = 6


def run_cli(folder: Path, seed: int) -> tuple[Path, Path]:
    """The image and its maps folder, made by `latentdesk generate` with the built-in model's defaults."""
    image, maps = folder / "image.png", folder / "maps"
    subprocess.run([sys.executable, "-m", "app", "generate", "--model", "builtin", "--prompt", PROMPT,
                    "--seed", str(seed), "--out", str(image), "--attention-maps", str(maps)], check=True, cwd=ROOT)
    return image, maps


def compose(image: Path, maps: Path) -> Image.Image:
    words = json.loads((maps / "words.json").read_text(encoding="utf-8"))
    missing = [w for w in WORDS if w not in words]
    if missing:
        raise SystemExit(f"no maps for {missing} in {maps / 'words.json'}")
    picture = Image.open(image)
    columns = [("image", picture, None)] + [(w, Image.open(maps / words[w]["overlay"]), Image.open(maps / words[w]["file"]))
                                            for w in WORDS]
    width, height = (side * SCALE for side in picture.size)
    sheet = Image.new("RGB", (len(columns) * (width + GAP) - GAP, 2 * height + GAP + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, overlay, grey) in enumerate(columns):
        left = i * (width + GAP)
        for top, panel in ((0, overlay), (height + GAP, grey)):
            if panel is not None:
                sheet.paste(panel.convert("RGB").resize((width, height), Image.Resampling.NEAREST), (left, top))
        text = label if label == "image" else f'"{label}" {words[label]["total"]:.0%}'
        draw.text((left + 2, 2 * height + GAP + 3), text, fill="black")
    return sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "attention-maps.png")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attention-figure-") as folder:
        sheet = compose(*run_cli(Path(folder), args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
