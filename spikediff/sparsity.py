"""Sparse firing as a training objective: a penalty on the denoiser's firing rates.

On a spike-driven chip every spike costs one synaptic operation per outgoing
connection, so a layer's energy grows with its firing rate. Training adds

    weight * mean over layers of max(rate_l - target_l, 0)

to the diffusion loss, where rate_l is the fraction of (neuron, step) slots of
layer l that spiked in the batch. The gradient reaches the weights through the
neurons' surrogate gradient like the main loss does. A target rate per layer
(default 0: every spike is penalised) lets a layer fire freely up to it.
"""
from __future__ import annotations

import torch


def firing_rates(spikes: list[torch.Tensor]) -> torch.Tensor:
    """[L] mean firing rate of each layer's spike train [T, B, C, H, W]."""
    return torch.stack([s.mean() for s in spikes])


def targets_for(targets: tuple[float, ...], n_layers: int) -> torch.Tensor:
    """The per-layer target rates: none given means 0, one value is shared."""
    if not targets:
        return torch.zeros(n_layers)
    if len(targets) == 1:
        return torch.full((n_layers,), float(targets[0]))
    if len(targets) != n_layers:
        raise ValueError(f"train.firing_target has {len(targets)} rates for a denoiser with "
                         f"{n_layers} spiking layers; give one rate, or one per layer")
    return torch.tensor(targets, dtype=torch.float32)


def firing_penalty(rates: torch.Tensor, weight: float, targets: torch.Tensor) -> torch.Tensor:
    return weight * (rates - targets.to(rates.device)).clamp(min=0).mean()
