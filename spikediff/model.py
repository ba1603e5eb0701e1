"""The whole generator: configuration, VQ-SVAE and denoiser in one bundle."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .denoiser import SpikingDenoiser
from .diffusion import Refinement, sample_tokens
from .fold import fold_denoiser
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

    def inference(self) -> "SpikingDiffusion":
        """Eval mode, the denoiser in its folded, spike-fed form (fold.py), as a
        chip runs it; a loaded checkpoint is already in it. Checkpoints hold
        the trained (factored) form: save before, not after."""
        self.denoiser = fold_denoiser(self.denoiser)
        from .qat import enable
        enable(self, self.config.train.quantize)   # the folded first layer is new
        return self.eval()

    @torch.no_grad()
    def generate(self, n: int, *, temperature: float | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None, device="cpu", on_step=None,
                 refine: Refinement | None = None):
        """Returns (images [n, C, H, W] in [0, 1], token grids [n, h, w]); settings
        left at None are the config's."""
        d = self.config.diffusion
        tokens = sample_tokens(
            self.denoiser, n, self.grid, self.denoiser.mask_id, self.diffusion_steps, steps,
            d.temperature if temperature is None else temperature, generator, device, on_step,
            d.refinement() if refine is None else refine)
        return self.vq.decode(tokens), tokens


def build_model(cfg: Config, channels: int, image_size: int) -> SpikingDiffusion:
    if image_size % 4:
        raise ValueError(f"image size must be a multiple of 4, got {image_size}")
    vq = VQSVAE(cfg.vq, channels)
    side = image_size // 4
    steps = cfg.diffusion.steps or side * side
    den = SpikingDenoiser(cfg.denoiser, cfg.vq.codebook_size, steps)
    model = SpikingDiffusion(cfg, vq, den, channels, image_size)
    from .qat import enable
    enable(model, cfg.train.quantize)
    return model


def active_random_model(preset: str = "tiny", seed: int = 0, channels: int = 1,
                        image_size: int = 28, token_input: str | None = None) -> SpikingDiffusion:
    """Random weights, batch-norm statistics from one random batch so that every
    layer fires (~30 %): for tests and timings of export and hardware back ends."""
    from .config import load_config
    torch.manual_seed(seed)
    cfg = load_config(preset)
    if token_input:
        cfg.denoiser.token_input = token_input
    m = build_model(cfg, channels, image_size)
    with torch.no_grad():
        for bn in [x for x in [*m.vq.modules(), *m.denoiser.modules()]
                   if isinstance(x, torch.nn.BatchNorm2d)]:
            bn.momentum = None
            bn.reset_running_stats()
            bn.weight.uniform_(1.0, 2.0)
            bn.bias.uniform_(0.5, 1.5)
        m.vq.train()
        m.denoiser.train()
        m.vq(torch.rand(8, channels, image_size, image_size))
        m.denoiser(torch.randint(0, m.denoiser.mask_id + 1, (8, *m.grid)),
                   torch.randint(1, m.diffusion_steps + 1, (8,)))
    return m.eval()
