"""What keeps an autoencoder's edges sharp, and how sharp they are.

    PatchDiscriminator(channels)     a small PatchGAN critic (Isola et al. 2017), as LDM's stage 1 uses
    edge_loss(recon, images)         L1 between the images' finite-difference gradients
    edge_sharpness(vae, dataset, n)  mean gradient magnitude at the originals' edges, decoded / original

L1 + MSE alone is minimised by a blur wherever the decoder is unsure where an edge lies: the
average of the possible edges. LDM's stage 1 adds a perceptual loss (LPIPS, a pretrained VGG we cannot
download) and a patch-based adversarial loss; here the perceptual role is taken by a loss on the
image gradients, which a blur pays for directly, and the adversarial one by a critic trained from
scratch that tells real 16-pixel patches from decoded ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EDGE_THRESHOLD = 0.1    # gradient magnitude (on [0, 1] pixels) above which an original's pixel is an edge


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
