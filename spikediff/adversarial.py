"""An optional adversarial loss for the VQ-SVAE's reconstructions (VQGAN-style).

A mean-squared error alone rewards blur, and FID punishes it: a small patch
discriminator pushes the decoder towards sharp, textured images. It is a
training aid only, an ordinary (non-spiking) conv net that never reaches the
exported model, the hardware back ends or the energy count.

Hinge losses (Esser et al. 2021, "Taming Transformers"); the generator term is
scaled by the ratio of the reconstruction's and the adversarial term's gradient
norms at the decoder's last layer, so one weight suits every data set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed


class PatchDiscriminator(nn.Module):
    """Real/fake logits for overlapping patches of images in [-1, 1]."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_weight: torch.Tensor,
                    limit: float = 1e4) -> torch.Tensor:
    """||grad rec|| / ||grad adv|| at the decoder's last weight (a constant)."""
    g_rec = torch.autograd.grad(rec_loss, last_weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_weight, retain_graph=True)[0]
    # Under torchrun: the global batch's gradients (each rank's loss is its slice's mean).
    g_rec, g_adv = distributed.mean(g_rec), distributed.mean(g_adv)
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, limit).detach()


class Adversary:
    """The discriminator, its optimizer and the two halves of a training step.

    `generator_terms` adds the adversarial term to the VQ-SVAE's loss (from
    step `start` on); `update` then trains the discriminator on the same batch,
    after the VQ-SVAE's own step, so neither step sees the other's new weights
    half-way through a backward pass.
    """

    def __init__(self, channels: int, weight: float, start: int, lr: float, seed: int,
                 state: dict | None = None, device="cpu"):
        self.weight, self.start = weight, start
        # Its own seeded draws: the VQ-SVAE's random stream (dead-code restarts)
        # stays what it is without the discriminator, so before `start` a run
        # with it is the run without it, bit for bit.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = distributed.sync_batchnorm(PatchDiscriminator(channels).to(device))
        # Betas (0.5, 0.9) as in VQGAN: a slow first moment keeps the game stable.
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.9))
        if state is not None:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["optimizer"])
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.opt.state_dict()}

    def generator_terms(self, out: dict, real: torch.Tensor, last_weight: torch.Tensor,
                        step: int) -> dict:
        """`out` (the VQ-SVAE's forward) with the adversarial term in its loss."""
        if step < self.start:
            return out
        fake = out["output"]
        adv = -self.net(fake).mean()
        scale = self.weight * adaptive_weight(out["loss"], adv, last_weight)
        self._pending = (real, fake.detach())
        return out | {"loss": out["loss"] + scale * adv, "adversarial": adv.detach(),
                      "adversarial_scale": scale}

    def update(self) -> dict:
        """One discriminator step on the batch the last `generator_terms` saw."""
        if self._pending is None:
            return {}
        real, fake = self._pending
        self._pending = None
        loss = discriminator_loss(self.net(real), self.net(fake))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.net.parameters())
        self.opt.step()
        return {"discriminator": loss.detach()}
