"""Absorbing-state discrete diffusion (Bond-Taylor et al. 2022) over code grids.

Forward process: at step t of N, each token is independently replaced by the
mask token with probability t / N. Training minimises the cross-entropy on
masked tokens, ELBO-weighted as published: each example's summed CE divided
by t. (An unweighted mean over masked tokens, as MaskGIT trains, sampled
worse: docs/experiments.md.) Sampling starts fully masked and, at each of S
steps, reveals every still-masked token with probability 1 / (steps left).
These are host-side steps: drawing random numbers, softmax and sampling.

Optional refinement (not in the paper; off by default): a revealed token is
never revised, so an early mistake stays. After the S steps, each of K
refinement steps re-masks a random fraction r of the finished grid and redraws
those tokens from the denoiser at the step t = r * N whose masking rate that
is, a remasking corrector in the spirit of ReMDM (Wang et al. 2025), at its own
temperature. Each costs one more denoiser pass.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .config import Refinement

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens, t) -> logits


def mask_tokens(x0: torch.Tensor, t: torch.Tensor, n_steps: int, mask_id: int,
                generator: torch.Generator | None = None, u: torch.Tensor | None = None):
    """Returns (x_t, mask): each token masked with probability t / n_steps
    (u: the uniform draws to compare with, drawn here when None)."""
    if u is None:
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
    mask = u < (t.float() / n_steps).view(-1, *([1] * (x0.dim() - 1)))
    return torch.where(mask, torch.full_like(x0, mask_id), x0), mask


def diffusion_loss(denoise: Denoise, x0: torch.Tensor, n_steps: int, mask_id: int,
                   shard: tuple[int, int] = (0, 1)) -> dict:
    """{"loss": what to minimise (the ELBO term), "elbo", "masked_ce": the mean
    cross-entropy over masked tokens, reported for comparison}. shard (rank,
    world): x0 is slice `rank` of `world` equal slices of the global batch."""
    B, (rank, world) = x0.shape[0], shard
    # Every rank draws the global batch's steps and masks and keeps its slice:
    # the random stream, and so the training, is one process's at the global batch.
    t = torch.randint(1, n_steps + 1, (B * world,), device=x0.device)
    u = torch.rand((B * world, *x0.shape[1:]), device=x0.device)
    keep = slice(rank * B, (rank + 1) * B)
    t, u = t[keep], u[keep]
    xt, mask = mask_tokens(x0, t, n_steps, mask_id, u=u)
    logits = denoise(xt, t)
    ce = F.cross_entropy(logits, x0, reduction="none") * mask
    n_tokens = x0[0].numel()
    # ELBO term for step t: (1/t) * summed CE over masked tokens, per token.
    elbo = (ce.flatten(1).sum(1) / t).mean() / n_tokens
    masked_ce = ce.sum() / mask.sum().clamp(min=1)
    return {"loss": elbo, "elbo": elbo.detach(), "masked_ce": masked_ce.detach()}


def sampling_schedule(n_steps: int, sample_steps: int) -> list[int]:
    """The diffusion step t shown to the network at each sampling step."""
    S = sample_steps
    return [max(1, math.ceil(s * n_steps / S)) for s in range(S, 0, -1)]


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """One token per position from softmax(logits / temperature); argmax at 0."""
    if temperature <= 0:
        return logits.argmax(1)
    probs = F.softmax(logits / temperature, dim=1)
    flat = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
    idx = torch.multinomial(flat, 1, generator=generator)
    return idx.view(logits.shape[0], logits.shape[2], logits.shape[3])


def device_generator(generator: torch.Generator | None, device) -> torch.Generator | None:
    """Draws stay where the logits are: copying them to the host each step made
    GPU sampling host-bound. A non-CPU device gets its own generator, seeded from
    the given one, so a seed still fixes the samples on each kind of device; on
    the CPU (the Lava and NIR parity runs) the given generator is used as is."""
    if generator is None or torch.device(device).type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def refine_step(n_steps: int, fraction: float) -> int:
    """The diffusion step whose masking rate is `fraction`."""
    return min(n_steps, max(1, round(fraction * n_steps)))


def forked(generator: torch.Generator | None) -> torch.Generator | None:
    """A generator for the refinement steps that leaves `generator` where it is,
    so that one seed gives the same unrefined samples, batch after batch, with or
    without refinement: the refined ones are those samples, revised."""
    if generator is None:
        return None
    probe = torch.Generator(device=generator.device)
    probe.set_state(generator.get_state())
    seed = int(torch.randint(0, 2**62, (1,), generator=probe, device=generator.device))
    return torch.Generator(device=generator.device).manual_seed(seed ^ 0x5EED)


@torch.no_grad()
def sample_tokens(denoise: Denoise, n: int, grid: tuple[int, int], mask_id: int, n_steps: int,
                  sample_steps: int | None = None, temperature: float = 1.0,
                  generator: torch.Generator | None = None, device="cpu",
                  on_step: Callable[[int], None] | None = None,
                  refine: Refinement | None = None) -> torch.Tensor:
    """Token grids [n, H, W] with no mask token left. `on_step` is called after
    each of the S sampling steps, then after each refinement step."""
    schedule = sampling_schedule(n_steps, sample_steps or n_steps)
    x = torch.full((n, *grid), mask_id, dtype=torch.long, device=device)
    g = device_generator(generator, device)
    for i, t in enumerate(schedule):
        steps_left = len(schedule) - i
        masked = x == mask_id
        logits = denoise(x, torch.full((n,), t, dtype=torch.long, device=device))
        proposal = draw(logits.float(), temperature, g)
        u = torch.rand(x.shape, generator=g, device=device)
        # as published: each masked token with probability 1 / (steps left)
        x = torch.where(masked & (u < 1.0 / steps_left), proposal, x)
        if on_step is not None:
            on_step(i)
    r = refine or Refinement()
    if r.steps:
        g = forked(g)
        t = torch.full((n,), refine_step(n_steps, r.fraction), dtype=torch.long, device=device)
    for i in range(r.steps):
        remask = torch.rand(x.shape, generator=g, device=device) < r.fraction
        logits = denoise(torch.where(remask, torch.full_like(x, mask_id), x), t)
        x = torch.where(remask, draw(logits.float(), r.temperature, g), x)
        if on_step is not None:
            on_step(len(schedule) + i)
    return x
