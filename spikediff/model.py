"""The whole generator: configuration, VQ-SVAE and denoiser in one bundle."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .denoiser import SpikingDenoiser
from .diffusion import sample_tokens
from .vqsvae import VQSVAE


@dataclass
class SpikingDiffusion:
    config: Config
    vq: VQSVAE
    denoiser: SpikingDenoiser
    channels: int
    image_size: int

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // 4  # two stride-2 encoder layers
        return side, side

    @property
    def diffusion_steps(self) -> int:
        return self.config.diffusion.steps or self.grid[0] * self.grid[1]

    def to(self, device) -> "SpikingDiffusion":
        self.vq.to(device)
        self.denoiser.to(device)
        return self

    def eval(self) -> "SpikingDiffusion":
        self.vq.eval()
        self.denoiser.eval()
        return self

    @torch.no_grad()
    def generate(self, n: int, *, temperature: float | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None, device="cpu", on_step=None):
        """Returns (images [n, C, H, W] in [0, 1], token grids [n, h, w])."""
        temp = self.config.diffusion.temperature if temperature is None else temperature
        tokens = sample_tokens(self.denoiser, n, self.grid, self.denoiser.mask_id,
                               self.diffusion_steps, steps, temp, generator, device, on_step)
        return self.vq.decode(tokens), tokens


def build_model(cfg: Config, channels: int, image_size: int) -> SpikingDiffusion:
    if image_size % 4:
        raise ValueError(f"image size must be a multiple of 4, got {image_size}")
    vq = VQSVAE(cfg.vq, channels)
    side = image_size // 4
    steps = cfg.diffusion.steps or side * side
    den = SpikingDenoiser(cfg.denoiser, cfg.vq.codebook_size, steps)
    return SpikingDiffusion(cfg, vq, den, channels, image_size)
