"""What keeps an autoencoder's edges sharp, and how sharp they are.

    PatchDiscriminator(channels)     a small PatchGAN critic (Isola et al. 2017), as LDM's stage 1 uses
    edge_loss(recon, images)         L1 between the images' finite-difference gradients
    edge_focus_weights(images, w)    per-pixel loss weights, (1 + w) within 2 px of the originals' edges
    detail_corners(images, crop, u)  crop corners that keep an image's edges (its object) in the crop
    edge_sharpness(vae, dataset, n)  mean gradient magnitude at the originals' edges, decoded / original

L1 + MSE alone is minimised by a blur wherever the decoder is unsure where an edge lies: the
average of the possible edges. LDM's stage 1 adds a perceptual loss (LPIPS, a pretrained VGG we cannot
download) and a patch-based adversarial loss; here the perceptual role is taken by a loss on the
image gradients, which a blur pays for directly, and the adversarial one by a critic trained from
scratch that tells real 16-pixel patches from decoded ones.

A small object is few pixels, and most of the loss is elsewhere: a 32-pixel star in a 128-pixel image is
3 % of it, and random 64-pixel crops hold all of it a quarter of the time. Its thin points, the detail
that tells it from a pentagon, were lost (issue #26). Edge focus and detail crops put the loss there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EDGE_THRESHOLD = 0.1    # gradient magnitude (on [0, 1] pixels) above which an original's pixel is an edge
EDGE_FOCUS_RADIUS = 2   # pixels around an edge that share its weight: where a blurred edge spreads


class PatchDiscriminator(nn.Module):
    """Three strided convolutions: one real/fake score per ~16-pixel patch (its receptive field)."""

    def __init__(self, channels: int = 64, in_channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * channels, 1, 3, padding=1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)       # (B, 1, H/4, W/4)


def hinge_losses(critic: PatchDiscriminator, images: Tensor, recon: Tensor) -> tuple[Tensor, Tensor]:
    """(the critic's hinge loss, the autoencoder's adversarial loss) in one pass each way.

    The critic learns from the reconstruction detached; the autoencoder's term runs the critic with
    detached weights (torch.func), so one backward of their sum trains each against the other and
    neither helps the other cheat.
    """
    critic_loss = 0.5 * (F.relu(1 - critic(images)).mean() + F.relu(1 + critic(recon.detach())).mean())
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    fool = -torch.func.functional_call(critic, frozen, (recon,)).mean()
    return critic_loss, fool


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def edge_loss(recon: Tensor, images: Tensor) -> Tensor:
    (rx, ry), (ix, iy) = _gradients(recon), _gradients(images)
    return F.l1_loss(rx, ix) + F.l1_loss(ry, iy)


def gradient_magnitude(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H-1, W-1): per-pixel |∇| on the [0, 1] scale, channels averaged."""
    gx, gy = _gradients(x / 2)
    return (gx[..., :-1, :].square() + gy[..., :, :-1].square()).sqrt().mean(dim=1)


@torch.no_grad()
def edge_sharpness(vae, dataset, n: int = 256, batch_size: int = 16) -> dict[str, float]:
    """How sharp the decoded edges are: the mean gradient magnitude at the originals' edge pixels, of the
    decoded images over that of the originals (1 = as sharp; a blur spreads the step and lowers it)."""
    from core.train.data import image_and_caption

    device = next(vae.parameters()).device
    decoded_sum = original_sum = 0.0
    count = 0
    n = min(n, len(dataset))
    for start in range(0, n, batch_size):
        x = torch.stack([image_and_caption(dataset, i)[0] for i in range(start, min(start + batch_size, n))]).to(device)
        recon = vae.decode(vae.encode(x).mean).clamp(-1, 1).float()
        original, decoded = gradient_magnitude(x.float()), gradient_magnitude(recon)
        edges = original > EDGE_THRESHOLD
        decoded_sum += float(decoded[edges].sum())
        original_sum += float(original[edges].sum())
        count += int(edges.sum())
    if count == 0:
        return {"edge_sharpness": float("nan"), "edge_pixels": 0}
    return {"edge_sharpness": decoded_sum / original_sum, "edge_gradient_original": original_sum / count,
            "edge_gradient_decoded": decoded_sum / count, "edge_pixels": count}


def edge_pixels(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) bool: the originals' edges (the last row and column never)."""
    return F.pad(gradient_magnitude(images.float()) > EDGE_THRESHOLD, (0, 1, 0, 1))


def edge_focus_weights(images: Tensor, focus: float) -> Tensor:
    """(B, 1, H, W) loss weights: 1 + focus within EDGE_FOCUS_RADIUS px of an edge, 1 elsewhere, scaled
    so each image's weights average 1 (the loss keeps its size; only where it falls changes)."""
    near = F.max_pool2d(edge_pixels(images)[:, None].float(), 2 * EDGE_FOCUS_RADIUS + 1, 1, EDGE_FOCUS_RADIUS)
    weights = 1 + focus * near
    return weights / weights.mean(dim=(2, 3), keepdim=True)


def detail_corners(images: Tensor, crop: int, uniform: Tensor) -> Tensor:
    """(B, 2) top-left corners of crop x crop windows that hold each image's edges: the whole box around
    them where it fits, else a window inside that box; anywhere for an image without edges.

    uniform: (B, 2) numbers in [0, 1) that pick the corner within its allowed range (the caller's seeded
    draw, so every process and a resumed run crop alike).
    """
    size_y, size_x = images.shape[-2:]
    edges = edge_pixels(images)
    corners = []
    for mask, u in zip(edges, uniform.tolist(), strict=True):
        corner = []
        for axis, size, draw in ((1, size_y, u[0]), (0, size_x, u[1])):
            hits = torch.nonzero(mask.any(dim=axis)).flatten()
            if len(hits) == 0:
                low, high = 0, size - crop
            else:
                first, last = int(hits[0]), int(hits[-1])
                if last - first + 1 <= crop:      # the box fits: any window holding it
                    low, high = max(0, last + 1 - crop), min(first, size - crop)
                else:                              # too big: a window inside the box
                    low, high = first, min(last + 1 - crop, size - crop)
            corner.append(low + int(draw * (high - low + 1)))
        corners.append(corner)
    return torch.tensor(corners)
