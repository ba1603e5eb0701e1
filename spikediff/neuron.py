"""The LIF neuron of Spiking-Diffusion, on Norse's LIF-box state update.

SPEC: `v <- v + (x - v) / 2`, spike when v crosses 1, hard reset to 0. Norse's
`lif_box_feed_forward_step` computes `v + dt * tau_mem_inv * (v_leak - v + x)`,
so tau_mem = 2 dt gives exactly that update. Norse spikes on `v > v_th`
(strictly), as NIR and Lava do; the reference's `v >= 1` differs only on exact
ties. The surrogate is Norse's SuperSpike, whose gradient 1 / (|v - 1| + 1)^2
is the same heavy-tailed bump as the reference's arctan surrogate (Norse
1.1.0 ignores its `alpha`, so none is set).
"""
from __future__ import annotations

import warnings

import torch

# Norse 1.1.0 calls torch.jit.script at import, which torch now deprecates.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
from norse.torch.functional.lif_box import (
    LIFBoxFeedForwardState,
    LIFBoxParameters,
    lif_box_feed_forward_step,
)

DT = 1e-3  # seconds per time step; NIR graphs record it, Lava maps with it
TAU_MEM = 2 * DT
V_TH = 1.0
V_RESET = 0.0


def lif_parameters() -> LIFBoxParameters:
    return LIFBoxParameters(
        tau_mem_inv=torch.tensor(1.0 / TAU_MEM),
        v_leak=torch.tensor(0.0),
        v_th=torch.tensor(V_TH),
        v_reset=torch.tensor(V_RESET),
        method="super",
    )


def lif_sequence(currents: torch.Tensor, p: LIFBoxParameters) -> torch.Tensor:
    """Spikes [T, ...] of a population driven by `currents` [T, ...], from rest."""
    state = LIFBoxFeedForwardState(v=torch.zeros_like(currents[0]))
    spikes = []
    for x in currents:
        z, state = lif_box_feed_forward_step(x, state, p, dt=DT)
        spikes.append(z)
    return torch.stack(spikes)


class LIF(torch.nn.Module):
    """Multi-step LIF population: [T, B, ...] currents in, [T, B, ...] spikes out."""

    def __init__(self):
        super().__init__()
        self.p = lif_parameters()

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        return lif_sequence(currents, self.p)


def psp(spikes: torch.Tensor, decay: float) -> torch.Tensor:
    """sum_t s_t * decay^(T-1-t): a leaky integrator read out at the last step."""
    T = spikes.shape[0]
    w = decay ** torch.arange(T - 1, -1, -1, dtype=spikes.dtype, device=spikes.device)
    return torch.tensordot(w, spikes, dims=([0], [0]))


def synaptic_filter(spikes: torch.Tensor, tau_steps: float = 2.0) -> torch.Tensor:
    """f_t = f_{t-1} + (s_t - f_{t-1}) / tau: the alignment loss's trace."""
    f = torch.zeros_like(spikes[0])
    out = []
    for s in spikes:
        f = f + (s - f) / tau_steps
        out.append(f)
    return torch.stack(out)
