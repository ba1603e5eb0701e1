"""The project's neurons: one dt, one set of LIF constants, one pure state update per kind.

SPEC: `v <- v + (x - v) / 2`, spike when v crosses 1, hard reset to 0. In NIR
terms (forward Euler with step dt, as Norse's `lif_box` computes it):

    LIF: v <- v + dt/tau * (r*I + v_leak - v); z = v > v_threshold; v <- (1-z) v + z v_reset
    LI:  v <- v + dt/tau * (r*I + v_leak - v), read v
    I:   v <- v + dt*r*I, read v

so tau = 2 dt, r = 1, v_leak = 0, threshold 1, reset 0 is the SPEC's neuron.
Spikes are strict (`v > v_th`), as in Norse, NIR and Lava; the reference's
`v >= 1` differs only on exact ties.

Two implementations, tied together by tests/test_neuron_parity.py:
- the model trains with Norse's `lif_box_feed_forward_step` (`LIF`,
  `lif_sequence`), which carries the surrogate gradient: SuperSpike, whose
  gradient 1 / (|v - 1| + 1)^2 is the same heavy-tailed bump as the reference's
  arctan surrogate (Norse 1.1.0 ignores its `alpha`, so none is set);
- every other torch-side caller (the ONNX writer, the NIR executor) uses the
  plain functions below (`lif_step`, `li_step`, `i_step`; `if_step`), written in Norse's
  expression order so equal currents give bit-identical spikes. They take
  per-step parameters (`leak` = dt/tau, `gain` = dt*r); `per_step` is the one
  translation from (tau, r, dt) to them.
The Lava worker (Python 3.10, no torch) has its own numpy copy of these
equations in hardware/lava/mapping.py; the parity test drives it too.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Union

import numpy as np
import torch

# Norse 1.1.0 calls torch.jit.script at import, which torch now deprecates: the
# filter holds for that import only, not for the importing program.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from norse.torch.functional.lif_box import (
        LIFBoxFeedForwardState,
        LIFBoxParameters,
        lif_box_feed_forward_step,
    )

DT = 1e-3  # seconds per time step: the model, the NIR graph and the Lava mapping all use it
TAU_MEM = 2 * DT
V_TH = 1.0
V_RESET = 0.0

Value = Union[float, torch.Tensor]


# -- per-step parameters and the pure state updates --------------------------------------
class LIParameters(NamedTuple):
    """Leaky integrator: `leak` = dt/tau, the fraction of the way to r*I + v_leak per step."""
    leak: Value
    r: Value = 1.0
    v_leak: Value = 0.0


class LIFParameters(NamedTuple):
    """LIF: an LI membrane with a strict threshold and a hard reset."""
    leak: Value = DT / TAU_MEM
    r: Value = 1.0
    v_leak: Value = 0.0
    v_th: Value = V_TH
    v_reset: Value = V_RESET


class IParameters(NamedTuple):
    """Integrator: `gain` = dt*r, added per unit of current per step."""
    gain: Value


class IFParameters(NamedTuple):
    """Integrate-and-fire: an integrator with a strict threshold and a hard reset
    (not in the model; the NIR executor runs any graph's IF nodes)."""
    gain: Value
    v_th: Value = V_TH
    v_reset: Value = V_RESET


def per_step(tau, r, dt: float, dtype: torch.dtype | None = None):
    """(dt/tau, dt*r) computed in float64, then cast to `dtype` (a tensor) or left as numpy.

    The one translation from continuous NIR parameters to what a step uses:
    float64 first, so a float32 run rounds each coefficient once.
    """
    leak = None if tau is None else dt / np.asarray(tau, dtype=np.float64)
    gain = None if r is None else dt * np.asarray(r, dtype=np.float64)
    if dtype is not None:
        leak = None if leak is None else torch.as_tensor(leak, dtype=dtype)
        gain = None if gain is None else torch.as_tensor(gain, dtype=dtype)
    return leak, gain


def li_step(x: torch.Tensor, v: torch.Tensor, p: LIParameters | LIFParameters) -> torch.Tensor:
    """One LI step; returns the new v."""
    # Norse's order: dv = (dt/tau) * (I + v_leak - v); v + dv
    return v + p.leak * (p.r * x + p.v_leak - v)


def i_step(x: torch.Tensor, v: torch.Tensor, p: IParameters) -> torch.Tensor:
    """One integrator step; returns the new v."""
    return v + p.gain * x


def spike_and_reset(v: torch.Tensor, v_th: Value, v_reset: Value):
    """(z, v): z = v > v_th as v's dtype, spiking neurons set to v_reset."""
    z = torch.gt(v - v_th, 0).to(v.dtype)
    return z, (1 - z) * v + z * v_reset


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFParameters = LIFParameters()):
    """One LIF step: (spikes, new v). No surrogate gradient (the model uses Norse's)."""
    return spike_and_reset(li_step(x, v, p), p.v_th, p.v_reset)


def if_step(x: torch.Tensor, v: torch.Tensor, p: IFParameters):
    """One IF step: (spikes, new v)."""
    return spike_and_reset(i_step(x, v, p), p.v_th, p.v_reset)


def lif_run(currents, p: LIFParameters = LIFParameters()) -> list[torch.Tensor]:
    """Spikes per step of a population driven by `currents` (a sequence over T), from rest.

    A list in and out, so the ONNX writer can unroll it step by step."""
    v = torch.zeros_like(currents[0])
    out = []
    for x in currents:
        z, v = lif_step(x, v, p)
        out.append(z)
    return out


# -- the model's neuron: Norse, with the surrogate gradient --------------------------------
def lif_parameters() -> LIFBoxParameters:
    """The same neuron as `LIFParameters()`, as Norse's parameters (at dt = DT)."""
    return LIFBoxParameters(
        tau_mem_inv=torch.tensor(1.0 / TAU_MEM),
        v_leak=torch.tensor(0.0),
        v_th=torch.tensor(V_TH),
        v_reset=torch.tensor(V_RESET),
        method="super",
    )


def lif_sequence(currents: torch.Tensor, p: LIFBoxParameters) -> torch.Tensor:
    """Spikes [T, ...] of a population driven by `currents` [T, ...], from rest."""
    if not (torch.is_grad_enabled() and currents.requires_grad):
        return lif_sequence_no_grad(currents, p)
    state = LIFBoxFeedForwardState(v=torch.zeros_like(currents[0]))
    spikes = []
    for x in currents:
        z, state = lif_box_feed_forward_step(x, state, p, dt=DT)
        spikes.append(z)
    return torch.stack(spikes)


def lif_sequence_no_grad(currents: torch.Tensor, p: LIFBoxParameters) -> torch.Tensor:
    """`lif_sequence` where no gradient is wanted: the same spikes, bit for bit,
    in half the tensor operations, in place, into one preallocated output.

    Norse's step, value for value: (dt / tau) * (x + v_leak - v) is the same
    product as (dt / tau) * (x - v) when v_leak = 0 (x + 0 == x); v - v_th > 0
    is v > v_th (finite floats with gradual underflow: a difference is 0 only
    between equal numbers); and (1 - z) v + z v_reset is v where z = 0 and
    v_reset where z = 1 (up to the sign of a zero, which never reaches a spike).
    tests/test_neuron.py checks it against Norse's step."""
    if p.v_leak.any():
        raise ValueError("lif_sequence_no_grad assumes v_leak = 0")
    leak = DT * p.tau_mem_inv  # Norse's dt * tau_mem_inv, the same float
    v_reset = float(p.v_reset)  # masked_fill_ is several times faster with a number
    out = torch.empty_like(currents)
    v = torch.zeros_like(currents[0])
    dv = torch.empty_like(v)
    for x, z in zip(currents, out):
        torch.sub(x, v, out=dv).mul_(leak)
        v.add_(dv)
        fired = torch.gt(v, p.v_th)
        z.copy_(fired)
        v.masked_fill_(fired, v_reset)
    return out


class LIF(torch.nn.Module):
    """Multi-step LIF population: [T, B, ...] currents in, [T, B, ...] spikes out."""

    def __init__(self):
        super().__init__()
        self.p = lif_parameters()

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        return lif_sequence(currents, self.p)


# -- read-outs -----------------------------------------------------------------------
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
