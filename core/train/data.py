"""Training data: captioned image folders, the shapes world, and the order batches are drawn in.

    CaptionedFolder(path, size)   image files with same-name .txt captions -> (image (3, S, S) in [-1, 1], caption)
    shapes(seed, length, split, captions_per_item)  the built-in model's synthetic world, as (image, caption)
                                  items, each with several phrasings of its caption
    BatchOrder(n, batch, seed)    which items step s uses: a pure function of (seed, s), so a resumed run
                                  (or a run on more processes) sees exactly the same batches
    BatchRandom(seed, step, ...)  the random numbers of one step, drawn for the whole batch
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from core.errors import LatentDeskError
from core.images import fit_image, image_to_tensor, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class CaptionedFolder(torch.utils.data.Dataset):
    """A folder of images (PNG, JPEG, WebP), each with an optional same-name `.txt` caption.

    `cat.png` + `cat.txt` is one item; an image without a caption file has the empty
    caption (it teaches the unconditional model). Images are scaled to cover
    `size` x `size` and centre-cropped, as img2img does. Sub-folders are not read.
    """

    def __init__(self, path: str | Path, size: int = 128):
        self.path = Path(path)
        self.size = size
        if not self.path.is_dir():
            raise LatentDeskError(f"{self.path}: no such folder of training images")
        self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise LatentDeskError(f"{self.path}: no training images in this folder "
                                  f"(it reads {', '.join(IMAGE_SUFFIXES)} files with same-name .txt captions)")

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, i: int) -> str:
        text_file = self.files[i].with_suffix(".txt")
        if not text_file.is_file():
            return ""
        try:
            return " ".join(text_file.read_text(encoding="utf-8").split())
        except UnicodeDecodeError:
            raise LatentDeskError(f"{text_file}: the caption is not UTF-8 text") from None

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        image = fit_image(load_image(self.files[i]), self.size, self.size)
        return image_to_tensor(image)[0], self.caption(i)  # (3, size, size) in [-1, 1]


def shapes(seed: int, length: int, split: str = "train", captions_per_item: int = 1,
           captions: str = "templates") -> torch.utils.data.Dataset:
    """The captioned-shapes world (docs/SHAPES.md) with no empty captions of its own.

    With `captions_per_item` > 1 each scene is phrased that many ways (`dataset.captions(i)`), so a
    scene seen 25 times over a run is not read in one wording 25 times. `captions`: "templates" (the
    first model's), "grammar" (core/shapes/grammar.py: captions as people write them, issue #26) or
    "mixed" (each phrasing from either).

    The trainer drops captions itself, anew at every step (`caption_dropout`), so a
    cached item is sometimes seen with and sometimes without its caption.
    """
    from core.shapes.dataset import ShapesDataset
    return ShapesDataset(seed, length, split=split, empty_prob=0.0, captions_per_item=captions_per_item,
                         captions=captions)


def image_and_caption(dataset, i: int) -> tuple[Tensor, str]:
    """Item i of any dataset whose items start with (image, caption): folders, shapes."""
    item = dataset[i]
    return item[0], item[1]


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several numbers, the same in every process and Python run (unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BatchOrder:
    """The items of each step: epochs of seeded permutations, cut into consecutive global batches.

    Step s takes positions s*B .. s*B+B-1 of the endless sequence perm(epoch 0) ++ perm(epoch 1) ...,
    so the data position is the step itself and nothing else needs saving to resume.
    Under DDP every process computes the same global batch and keeps its own slice of it.
    """

    def __init__(self, length: int, batch_size: int, seed: int):
        if length < 1:
            raise LatentDeskError("the training data set is empty")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=generator)
        return self._perm

    def indices(self, step: int) -> list[int]:
        """The global batch of step `step` (0-based): `batch_size` item indices."""
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.length)
            out.append(int(self.permutation(epoch)[offset]))
        return out


class BatchRandom:
    """The random numbers of one training step, drawn for the whole global batch.

    Each draw is made for all `batch_size` rows from a generator seeded with (seed, step),
    then this process keeps its `rows`: one process or eight, first run or resumed,
    every sample sees the same noise, timestep and caption dropout.
    """

    def __init__(self, seed: int, step: int, batch_size: int, rows: slice):
        self.generator = torch.Generator().manual_seed(mix_seed(seed, "step", step))
        self.step = step
        self.batch_size, self.rows = batch_size, rows

    def randn(self, *shape: int) -> Tensor:
        return torch.randn((self.batch_size, *shape), generator=self.generator)[self.rows]

    def rand(self, *shape: int) -> Tensor:
        return torch.rand((self.batch_size, *shape), generator=self.generator)[self.rows]

    def randint(self, high: int, *shape: int) -> Tensor:
        return torch.randint(high, (self.batch_size, *shape), generator=self.generator)[self.rows]
