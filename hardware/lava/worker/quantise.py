"""Fixed-point parameters of a plan for Lava's fixed_pt models (numpy only: no Lava).

The bit widths, rounding and weight split are export.fixed_point's; this
module picks each population's power-of-two scale S (float 1.0 == S units of
a_in) from the currents a float run of the same inputs really produces
(:func:`float_currents`), and turns a plan into integer biases and per link
the 8-bit Sparse parts (:func:`fixed_params`).

Measured on the shipped checkpoint (2 images, 4 steps; a bit-exact numpy
emulation of these models, each layer fed the float spikes of the layer
before vs the whole chain): with S from the all-inputs-spike bound sum|w| the
first denoiser layer got S = 16, i.e. its threshold was 16 a_in units and
every step's input was floored to 1/16 of it (97.5 % agreement on its own),
while the currents really seen were 62x below that bound (11x for the
spike-fed layers).  Weight mantissas were the next error: 8 bits of the
largest weight are 2 % of the threshold in the first layer.  The 8-bit
clock-link bias was third.  Hence:
 1. S from the currents observed in a float run of the same inputs
    (float_currents, HEADROOM x below the int16 limit), never more than the
    worst-case bound needs; the worker re-checks every call's currents and
    rebuilds with a smaller S before a run could leave the int16 range
    (:func:`covers`).  Without observations: the worst-case bound.
 2. Each link as two Sparse processes on the same axons: coarse mantissas
    with weight_exp e and the rounding residual with its own exponent
    (about e - 7), i.e. 15-bit weights from two 8-bit synapses (two
    synapses per connection in synaptic memory and work; one Sparse with a
    separate exponent per group of target rows instead measured 93-97 %
    on the deeper layers, not enough).
 3. The constant bias as the LIF's own 13-bit bias_mant/bias_exp instead of
    an 8-bit weight from a clock source; LIFReset zeroes u and v at the first
    valid step, so a bias already running during the earlier junk steps is
    wiped (and so is every spike it caused, which arrives before the next
    layer's reset).  floating_pt now does the same: a clock link fed the
    bias into u, which a CubaLIF (du < 1) filters, so it was wrong there.
Result on the same run (real Lava): 99.9 / 99.5 / 98.4 / 97.6 % over the
denoiser layers (was 97.2 / 93.4 / 89.8 / 92.3), 100 / 100.0 / 99.99 % for the
decoder's (was 99.3 / 98.3 / 98.5); Lava time 15.2 s -> 16.0-17.7 s (the
residual parts; measured on a busy 2-core machine).
"""

from __future__ import annotations

import numpy as np

from export.fixed_point import (A_IN_LIMIT, BIAS_LIMIT, DECAY_MAX, FIT_TOL, INPUT_BITS, V_LIMIT,
                                  V_SHIFT, WEIGHT_MODES, bias_mantissas, decay, grid_error, input_scale,
                                  pow2_floor, weight_parts)
from hardware.lava.worker.plan import MappingError, Plan

HEADROOM = 2.0             # observed currents use at most 1/HEADROOM of the int16 range
GUARD = 1.25               # a cached net is reused while currents stay 1/GUARD below it


def float_currents(plan: Plan, inputs: dict) -> dict:
    """Float run of the plan on inputs {Input: [T, B, *shape]}, in aligned time
    (no Lava): {population: (max |a_in|, max |v| after the spike reset)}.
    Links are memoryless, so every link is one matrix product over all T*B
    columns; only the neuron update loops over T."""
    T, B = np.shape(next(iter(inputs.values())))[:2]
    vals, obs = {}, {}
    for name, p in plan.pops.items():
        if p.kind == "Input":
            x = np.asarray(inputs[name], dtype=np.float64).reshape(T * B, p.size)
            vals[name] = x.T  # [n, T*B], column t*B + b
    for name, p in plan.pops.items():
        if p.kind == "Input":
            continue
        a = np.zeros((p.size, T * B))
        for lk in plan.links:
            if lk.target == name:
                a += lk.matrix @ vals[lk.source]
        a = a.reshape(p.size, T, B)
        u = np.zeros((p.size, B))
        v = np.zeros((p.size, B))
        out = np.zeros((p.size, T, B))
        vmax = 0.0
        for t in range(T):
            u = u * (1.0 - p.du) + a[:, t]
            v = v * (1.0 - p.dv) + u + p.bias[:, None]
            if p.spiking:
                s = v > p.vth
                v[s] = 0.0
                out[:, t] = s
            else:
                out[:, t] = v
            vmax = max(vmax, float(np.abs(v).max()) if v.size else 0.0)
        vals[name] = out.reshape(p.size, T * B)
        obs[name] = (float(np.abs(a).max()) if a.size else 0.0, vmax)
    return obs



def worst_current(plan: Plan, name: str, input_range: dict) -> float:
    """The worst-case |a_in| of a population: every spike source firing at once."""
    p = plan.pops[name]
    bound = np.zeros(p.size)
    for lk in plan.links:
        src = plan.pops[lk.source]
        if lk.target != name:
            continue
        xm = 1.0 if src.spiking else float(input_range.get(lk.source, 1.0))
        bound += abs(lk.matrix).sum(axis=1).A1 * xm
    return float(bound.max()) if bound.size else 0.0


def population_scale(plan: Plan, name: str, input_range: dict, observed, worst=None):
    """(S, worst-case |a_in|): the largest power-of-two S that keeps |a_in| * S,
    the threshold, the bias and |v| * S within Lava's fixed-point ranges
    (worst: worst_current, where the caller has it)."""
    p = plan.pops[name]
    worst = A = worst_current(plan, name, input_range) if worst is None else worst
    if observed is not None and name in observed:
        A = min(A, HEADROOM * observed[name][0])
    cands = [A_IN_LIMIT / max(A, 1e-12)]
    if p.spiking:
        cands.append(V_LIMIT / max(abs(p.vth), 1e-12))
    if observed is not None and name in observed and observed[name][1] > 0:
        cands.append(V_LIMIT / (HEADROOM * observed[name][1]))  # 24-bit v (Lava clips it)
    if np.any(p.bias):
        cands.append(BIAS_LIMIT / 2.0 ** V_SHIFT / float(np.abs(p.bias).max()))
    return pow2_floor(min(cands)), worst


def fixed_params(plan: Plan, input_range: dict, observed: dict | None = None,
                 weights: str = "single"):
    """Per population scale S (float 1.0 == S a_in units), integer bias
    (mantissa, exponent) in v units and worst-case |a_in| (float); per link a
    list of (weight mantissas, weight_exp) Sparse parts: one ("single", one
    8-bit synapse per connection; :func:`check_fits` first) or up to two
    ("split")."""
    if weights not in WEIGHT_MODES:
        raise MappingError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    scales = {}
    for name, p in plan.pops.items():
        if p.kind == "Input":
            scales[name] = input_scale(float(input_range.get(name, 1.0)))
    qbias, worst = {}, {}
    for name, p in plan.pops.items():
        if p.kind == "Input":
            continue
        S, worst[name] = population_scale(plan, name, input_range, observed)
        scales[name] = S
        qbias[name] = bias_mantissas(p.bias * S * 2.0 ** V_SHIFT)  # v units
    qlinks = []
    for lk in plan.links:
        src = plan.pops[lk.source]
        S_s = scales[lk.source] if src.kind == "Input" else 1.0  # spikes are 0/1
        qlinks.append(weight_parts((lk.matrix * (scales[lk.target] / S_s)).tocsr(), weights))
    return scales, qlinks, qbias, worst


def covers(scales: dict, worst: dict, observed: dict) -> bool:
    """True while currents observed on new inputs ({population: (max |a_in|,
    max |v|)}) stay GUARD below the ranges the scales were chosen for (|a_in|
    int16, |v| 24-bit)."""
    for name, (amax, vmax) in observed.items():
        S = scales[name]
        a_ok = worst[name] * S <= A_IN_LIMIT or GUARD * amax * S <= A_IN_LIMIT
        if not a_ok or GUARD * vmax * S > V_LIMIT:
            return False
    return True


def input_ranges(inputs: dict) -> dict:
    """Quantisation range of each analog input of a call: max |x| rounded up to
    a power of two (the worker's rule; the emulator uses the same)."""
    rng = {}
    for k, v in inputs.items():
        v = np.asarray(v)
        m = float(np.abs(v).max()) if v.size else 1.0
        rng[k] = float(2.0 ** np.ceil(np.log2(max(m, 1e-6))))
    return rng


def merge_observed(new: dict, old: dict) -> dict:
    """The calibration a rebuilt net gets: the largest currents seen so far
    (so S only shrinks)."""
    return {k: tuple(max(a, b) for a, b in zip(v, old.get(k, v))) for k, v in new.items()}


# -- frozen scales ------------------------------------------------------------------
# A chip holds fixed weights, exponents and thresholds: it cannot re-derive its
# scales from every input.  A calibration fixes them once for a graph:
#     {"input_range": {Input: power of two}, "observed": {population: [max |a_in|, max |v|]}}
# (the largest float currents over a calibration set, e.g. every call of a
# float generation).  Lava worker and emulator build their nets from the same
# calibration with fixed_params, so both hold the same integers for every call.

def calibration_of(plan: Plan, inputs: dict) -> dict:
    """The calibration one call's inputs give on their own (float_currents)."""
    return {"input_range": input_ranges(inputs),
            "observed": {k: [a, v] for k, (a, v) in float_currents(plan, inputs).items()}}


def merge_calibration(new: dict, old: dict | None) -> dict:
    """Largest input ranges and currents of two calibrations (of one graph)."""
    if not old:
        return {"input_range": dict(new["input_range"]),
                "observed": {k: list(v) for k, v in new["observed"].items()}}
    rng = {k: max(v, old["input_range"].get(k, v)) for k, v in new["input_range"].items()}
    obs = merge_observed({k: tuple(v) for k, v in new["observed"].items()},
                         {k: tuple(v) for k, v in old["observed"].items()})
    return {"input_range": rng, "observed": {k: list(v) for k, v in obs.items()}}


def check_calibration(plan: Plan, calibration, what: str = "calibration") -> tuple[dict, dict]:
    """(input_range, observed) of a calibration, checked against the plan: the
    same Input nodes and populations, finite non-negative numbers; anything
    else is a MappingError naming the difference."""
    if not isinstance(calibration, dict) or not isinstance(calibration.get("input_range"), dict) \
            or not isinstance(calibration.get("observed"), dict):
        raise MappingError(f"{what} must hold 'input_range' and 'observed' mappings")
    rng, obs = calibration["input_range"], calibration["observed"]
    for got, want, kind in ((rng, [n for n, p in plan.pops.items() if p.kind == "Input"], "inputs"),
                            (obs, [n for n, p in plan.pops.items() if p.kind != "Input"],
                             "populations")):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            raise MappingError(
                f"{what} does not match the graph's {kind}"
                + (f"; missing: {', '.join(missing[:6])}" if missing else "")
                + (f"; not in the graph: {', '.join(extra[:6])}" if extra else ""))
    try:
        rng = {k: float(v) for k, v in rng.items()}
        obs = {k: (float(v[0]), float(v[1])) for k, v in obs.items()}
    except (TypeError, ValueError, IndexError, KeyError):
        raise MappingError(f"{what}: input ranges must be numbers and currents "
                           "[max |a_in|, max |v|] pairs") from None
    vals = list(rng.values()) + [x for pair in obs.values() for x in pair]
    if not all(np.isfinite(x) and x >= 0 for x in vals) or not all(v > 0 for v in rng.values()):
        raise MappingError(f"{what}: ranges and currents must be finite and >= 0 "
                           "(input ranges > 0)")
    return rng, obs


def input_clipped(x, scale: float) -> int:
    """Analog input values beyond a frozen input range (quantise_input clips them
    to INPUT_BITS): counted, not silently wrong.  A value at the range itself
    (2**15 units) loses its last unit to the int16 saturation in any mode: the
    mapping's own rounding, not counted."""
    return int((np.abs(np.round(np.asarray(x) * scale)) > 2 ** (INPUT_BITS - 1)).sum())


def lif_params(p, S: float, qbias) -> dict:
    """Integer LIFReset parameters of a population with scale S (fixed_pt):
    du with Lava's ds_offset of 1 (du = 1.0 -> 4095 + 1), dv without offset
    (clipped to 4095), vth in a_in units (readouts: the largest 17-bit value,
    never reached), bias mantissa and exponent in v units."""
    mant, bexp = qbias
    return dict(du=int(np.clip(decay(p.du) - 1, 0, DECAY_MAX)),
                dv=int(np.clip(decay(p.dv), 0, DECAY_MAX)),
                vth=V_LIMIT if not p.spiking else int(round(p.vth * S)),
                bias_mant=np.asarray(mant), bias_exp=int(bexp))


def link_name(plan: Plan, lk) -> str:
    """A link by its target (and source where the target has several)."""
    n = sum(1 for other in plan.links if other.target == lk.target)
    return lk.target if n == 1 else f"{lk.source}->{lk.target}"


def misfits(plan: Plan) -> list:
    """[(link name, grid error in mantissa LSBs)] of the links whose weights do
    not fit one 8-bit synapse (relays, identity, always fit)."""
    bad = []
    for lk in plan.links:
        err = grid_error(lk.matrix.data)
        if err > FIT_TOL:
            bad.append((link_name(plan, lk), err))
    return bad


FIT_HELP = ("fine-tune the checkpoint with quantization-aware training ([train] quantize = "
            "\"loihi8\": `spikediff train --finetune CKPT --config "
            "benchmarks/configs/qat-loihi8.toml`, then its decoder stage), or run the "
            "two-synapse split (--lava-weights split: two 8-bit synapses per connection, "
            "twice the synaptic memory and operations)")


def check_fits(plan: Plan, what: str = "the graph") -> None:
    """Refuse one 8-bit weight per synapse for weights that do not fit it."""
    bad = misfits(plan)
    if bad:
        names = ", ".join(f"{n} ({e:.2g} LSB off the grid)" for n, e in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise MappingError(
            f"{what}: {len(bad)} layer(s) do not fit one 8-bit weight per synapse: {names}{more}; "
            f"{FIT_HELP}")
