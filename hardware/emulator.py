"""Lava's CUBA fixed_pt arithmetic in torch, bit for bit, batched: the fast
stand-in for ``--backend lava --lava-mode fixed_pt``.

It runs the same plan (hardware.lava.worker.plan) with the same fixed-point
parameters (hardware.lava.worker.quantise: scales, 8-bit weight parts, 13-bit
biases, integer LIF parameters; frozen scales from a calibration, or the
worker's per-call re-calibration rule), so "bit exact" is about arithmetic only.  The arithmetic is that of the installed Lava
(lava-nc 0.x, lava/proc/sparse/models.py AbstractPySparseModelBitAcc and
lava/proc/lif/models.py AbstractPyLifModelFixed / PyLifResetModelBitAcc), in
its order:

Sparse (per 8-bit part, one step of delay):
  acc = W8 @ s_in  (W8: lava_sparse_weights, i.e. Lava's clip + LSB truncation)
  a_out = acc << weight_exp  or  acc >> -weight_exp  (arithmetic: floor)
  sent through an int32 channel (wraps).
LIF a_in: the sum over all Sparse ports into it, in int32 (the port's
  declared int16 type does not saturate in Lava's Python model: an int16
  zero array plus int32 messages is int32; the mapping's scales keep
  |a_in| <= 2**15 - 1, which :attr:`FixedPointNet.a_in_over` counts).
u = trunc((u * (4096 - (du + 1))) / 4096) + (a_in << 6), wrapped to 24 bits
v = clip(trunc((v * (4096 - dv)) / 4096) + u + (bias_mant << bias_exp), +-(2**23 - 1))
spike = v > vth << 6; v = 0 where it spiked.  LIFReset zeroes u, v at the
  first step whose (lagged) input is valid, so in aligned time every
  population starts from zero and its junk steps never matter
  (network.LavaNet's docstring); links are memoryless, so each link is one
  matrix product over all T*B columns and only the neurons loop over T.

Integers are held in floats, exactly (FixedPointNet.run says how): products of
integer mantissas and integer inputs, power-of-two shifts, the truncating
decays (|v| * 4096 < 2**35 << 2**53). A link
that is one convolution (plan.Link.conv) is convolved with its mantissa kernel
instead of multiplied by the composed sparse matrix (several times faster),
after a check at build time that kernel and matrix give the same integers on
random inputs; spike-fed kernels whose |row sums| stay below 2**24 convolve in
float32 (every partial sum an exact integer) with oneDNN's direct convolution
(else im2col + GEMM; never torch's default conv2d dispatch, which can pick
NNPACK's Winograd transforms: measured inexact on these integers).
"""
from __future__ import annotations

import functools
import time
import warnings
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from export.fixed_point import (A_IN_LIMIT, V_BITS, V_SHIFT, lava_sparse_weights, mantissas,
                                quantise_input)

UV_MAX = 2 ** (V_BITS - 1)        # Lava's max_uv_val
DECAY_SHIFT = 12


def _wrap32(x: torch.Tensor) -> torch.Tensor:
    """int64 -> the int32 value numpy would store (two's complement wrap)."""
    return ((x + 2 ** 31) % 2 ** 32) - 2 ** 31


def _decay(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Lava's decay: sign(x * keep) * (|x * keep| >> 12), i.e. truncation toward 0
    (its int32 cast is a no-op: |x| < 2**23 and keep <= 4096 keep it below 2**23)."""
    if keep == 0:
        return torch.zeros_like(x)
    y = x * keep
    return torch.sign(y) * (y.abs() >> DECAY_SHIFT)


def _sparse(M) -> torch.Tensor:
    M = M.tocsr()
    with warnings.catch_warnings():   # "beta" CSR support: products with dense are what we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(M.indptr.astype(np.int64)),
                                   torch.from_numpy(M.indices.astype(np.int64)),
                                   torch.from_numpy(M.data.astype(np.float64)),
                                   size=M.shape, dtype=torch.float64)


def _onednn_exact() -> bool:
    """oneDNN present and computing float32 as float32 (no TF32/bf16 math mode,
    which would round the integer products)."""
    mk = torch.backends.mkldnn
    if not mk.is_available():
        return False
    modes = {str(getattr(getattr(mk, "conv", None), "fp32_precision", "none")),
             str(getattr(mk, "fp32_precision", "none"))}
    return modes <= {"none", "ieee"}


class _Conv:
    """A link's 8-bit mantissas as a convolution kernel (see the module docstring)."""

    def __init__(self, kernel, stride, padding, in_shape, exact32, rounded=True):
        self.stride, self.padding, self.in_shape = stride, padding, in_shape
        self.rounded = rounded
        self.dtype = torch.float32 if exact32 else torch.float64
        self.kernel = torch.from_numpy(kernel).to(self.dtype)

    @classmethod
    def of(cls, conv, ratio, op, spiking):
        """The kernel of plan.Link.conv in the units of op = (W8 sparse, weight_exp),
        or None where it does not reproduce W8 exactly."""
        w, stride, padding, in_shape = conv
        K = w * ratio
        Kq, e = mantissas(sp.csr_matrix(K.reshape(1, -1)))
        if e != op[1]:
            return None
        k = Kq.toarray().reshape(K.shape)
        exact32 = spiking and float(np.abs(k).reshape(k.shape[0], -1).sum(1).max()) < 2 ** 24
        c = cls(k, stride, padding, in_shape, exact32)
        W = op[0]
        g = torch.Generator().manual_seed(0)
        n = W.shape[1]
        probe = (torch.randint(0, 2, (n, 3), generator=g) if spiking else
                 torch.randint(-3, 4, (n, 3), generator=g)).to(torch.float64)
        ref = torch.round(W @ probe).to(torch.int64)
        if ref.shape[0] != int(np.prod(c.out_shape(1))) or not torch.equal(c(probe, 3), ref):
            return None
        return c

    def out_shape(self, N):
        C, H, W = self.in_shape
        O, _, kh, kw = self.kernel.shape
        Ho = (H + 2 * self.padding[0] - kh) // self.stride[0] + 1
        Wo = (W + 2 * self.padding[1] - kw) // self.stride[1] + 1
        return (N, O, Ho, Wo)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, n_source] (row = sample) -> [N, n_target] in self.dtype, unrounded."""
        N = x.shape[0]
        xi = x.reshape(N, *self.in_shape).to(self.dtype)
        if self.dtype == torch.float32 and _onednn_exact():
            # oneDNN's direct convolution (torch passes algorithm::convolution_direct;
            # never Winograd): products and partial sums are integers < 2**24, exact
            # in any order; 2-4x faster than im2col + GEMM (measured, 1 thread)
            y = torch.mkldnn_convolution(xi, self.kernel, None, list(self.padding),
                                         list(self.stride), [1, 1], 1)
        elif self.dtype == torch.float32:   # im2col + GEMM: integer partial sums only
            O, _, kh, kw = self.kernel.shape
            cols = F.unfold(xi, (kh, kw), padding=self.padding, stride=self.stride)
            y = self.kernel.reshape(O, -1) @ cols                       # [N, O, L]
        else:                             # float64: no Winograd path in torch
            y = F.conv2d(xi, self.kernel, None, self.stride, self.padding)
        return y.reshape(N, -1)

    def __call__(self, x: torch.Tensor, N: int) -> torch.Tensor:
        """x [n_source, N] (column = sample) -> [n_target, N] (int64 where rounded)."""
        y = self.rows(x.t()).t()
        return torch.round(y).to(torch.int64) if self.rounded else y


class FixedPointNet:
    """One plan with fixed fixed-point parameters (what one LavaNet holds)."""

    def __init__(self, plan, input_range: dict, observed: dict, weights: str = "single"):
        from hardware.lava.worker.quantise import check_fits, fixed_params, lif_params
        self.plan, self.weights = plan, weights
        self.input_range, self.observed = dict(input_range), dict(observed)
        if weights == "single":
            check_fits(plan)
        self.scales, qlinks, qbias, self.worst = fixed_params(plan, self.input_range,
                                                              self.observed, weights)
        self.links = []   # (source, target, [(W8 float64 sparse | _Conv, weight_exp)])
        for lk, parts in zip(plan.links, qlinks):
            ops = [(_sparse(lava_sparse_weights(Mq)), int(e)) for Mq, e in parts]
            # relays only delay (aligned time has no delays): the link is its conv
            if lk.conv is not None and len(ops) == 1:
                src = plan.pops[lk.source]
                ratio = self.scales[lk.target] / (self.scales[lk.source]
                                                  if src.kind == "Input" else 1.0)
                c = _Conv.of(lk.conv, ratio, ops[0], src.spiking)
                if c is not None:
                    ops = [(c, ops[0][1])]
            self.links.append((lk.source, lk.target, ops))
        self.lif = {}
        for name, p in plan.pops.items():
            if p.kind == "Input":
                continue
            kw = lif_params(p, self.scales[name], qbias[name])
            bias = torch.from_numpy(np.asarray(kw["bias_mant"], dtype=np.int64).reshape(-1, 1))
            self.lif[name] = dict(
                keep_u=2 ** DECAY_SHIFT - (kw["du"] + 1),     # ds_offset = 1
                keep_v=2 ** DECAY_SHIFT - kw["dv"],           # dm_offset = 0
                vth=int(kw["vth"]) << V_SHIFT,
                bias=bias << int(kw["bias_exp"]))
            self.lif[name]["bias_f"] = self.lif[name]["bias"].view(1, -1).to(torch.float64)
        # values beyond the fixed-point ranges (frozen scales can meet currents
        # larger than the calibration's): counted, not silently wrong
        self.a_in_over = 0   # a_in beyond int16 (Loihi would saturate; Lava does not)
        self.v_clipped = 0   # v clipped to 24 bits (Lava and Loihi do)
        self.input_clipped = 0   # analog inputs saturated to 16 bits
        self.T_B = None

    def covers(self, observed) -> bool:
        from hardware.lava.worker.quantise import covers
        return covers(self.scales, self.worst, observed)

    @torch.no_grad()
    def run(self, inputs: dict, record=None) -> dict:
        """inputs {Input: [T, B, *shape]} -> {node: [T, B, *shape]} in aligned time:
        uint8 spikes of spiking populations, float64 v / (S * 2**6) of read-outs.

        Layout: every population's values are [T*B, n] (row t*B + b), the
        layout of the convolutions' [N, C, H, W], so nothing is transposed
        between layers and each time step of the neuron loop is one contiguous
        [B, n] block. Integers are held in floats, exactly: link outputs in
        the convolution's dtype (float32 where every partial sum stays below
        2**24, _Conv.of; the weight_exp shift is a power-of-two product, exact
        in float32 too), a_in in that dtype where one link feeds a population
        (else the float64 sum), u and v in float64 (|values| < 2**36 << 2**53:
        the decays' products |v| * 4096 < 2**35 included), so there are no
        round/int64 copies; Lava's int32 wraps are checked with one min/max
        reduction and applied only where a value leaves the range."""
        from hardware.lava.worker.quantise import input_clipped
        plan = self.plan
        T, B = np.shape(next(iter(inputs.values())))[:2]
        N = T * B
        vals, steps = {}, {}   # steps: 1 where an input is the same at every step
        for name, p in plan.pops.items():
            if p.kind == "Input":
                x = np.asarray(inputs[name], dtype=np.float64).reshape(T, B * p.size)
                # inputs repeated at every step (the exports' analog inputs): links
                # are memoryless, so their currents are computed once, not T times
                steps[name] = 1 if T > 1 and (x[1:] == x[:1]).all() else T
                x = x[:steps[name]].reshape(-1, p.size)
                self.input_clipped += input_clipped(x, self.scales[name]) * (T // steps[name])
                vals[name] = torch.from_numpy(quantise_input(x, self.scales[name]))
        out = {}
        for name, p in plan.pops.items():
            if p.kind == "Input":
                continue
            srcs = [src for src, tgt, _ in self.links if tgt == name]
            Ta = 1 if srcs and all(steps.get(s_, T) == 1 for s_ in srcs) else T
            a = None
            for src, tgt, parts in self.links:
                if tgt != name:
                    continue
                for W, e in parts:
                    if isinstance(W, _Conv):
                        acc = W.rows(vals[src])
                    else:   # torch's sparse @ dense wants [n_source, N]
                        acc = (W @ vals[src].t().to(torch.float64)).t()
                    acc = _shift(acc, e)
                    if acc.shape[0] != Ta * B:
                        acc = acc.repeat(T, 1)
                    # one part: its own (exact) float32 values; a sum: float64
                    a = acc if a is None else a.to(torch.float64).add_(acc)
            if a is None:
                a = torch.zeros(N, p.size, dtype=torch.float64)
            a = _wrap32_if_needed(a)   # also each part's (|part| < 2**31: _shift)
            if _absmax(a) > A_IN_LIMIT:
                self.a_in_over += int((a.abs() > A_IN_LIMIT).sum()) * (T // Ta)
            spikes = self._neurons(name, a.view(Ta, B, p.size), p.spiking, T)
            vals[name] = spikes.view(N, p.size)
            out[name] = spikes
        names = list(record) if record else [n for n, p in plan.pops.items()
                                             if p.kind != "Input"] + list(plan.alias)
        res = {}
        for r in names:
            base = plan.alias.get(r, r)
            p = plan.pops[base]
            x = out[base].view(T, B, *p.shape)
            if p.spiking:
                res[r] = x.to(torch.uint8).numpy()
            else:
                res[r] = x.numpy() / (self.scales[base] * 2.0 ** V_SHIFT)
        return res

    def _neurons(self, name, a, spiking, T):
        """a [T or 1, B, n] (float64 integers; 1: the same at every step) ->
        [T, B, n]: float32 0/1 spikes of a spiking population (the next links'
        input as it is), float64 v of a read-out.  Lava's update (module
        docstring), in place."""
        c = self.lif[name]
        _, B, n = a.shape
        ku, kv = c["keep_u"] / 2 ** DECAY_SHIFT, c["keep_v"] / 2 ** DECAY_SHIFT  # exact dyadics
        u = torch.zeros(B, n, dtype=torch.float64)
        v = torch.zeros(B, n, dtype=torch.float64)
        bias, vth = c["bias_f"], float(c["vth"])
        res = torch.zeros(T, B, n, dtype=torch.float32 if spiking else torch.float64)
        a = a * 2 ** V_SHIFT
        # int32 overflow of (a_in << 6) + decayed u needs |a_in| >= 2**24: check once
        wrap = _absmax(a) >= 2 ** 30
        if wrap:
            a = _wrap32(a.to(torch.float64))
        for t in range(T):
            u.mul_(ku).trunc_().add_(a[t if len(a) > 1 else 0])  # trunc(u*keep/4096) + (a_in << 6)
            if wrap:
                u = _wrap32(u)
            lo, hi = torch.aminmax(u)
            if float(hi) > UV_MAX or float(lo) <= -UV_MAX:   # 24-bit wrap of u
                u = torch.where(u > UV_MAX, u - 2 * UV_MAX, u)
                u = torch.where(u <= -UV_MAX, u + 2 * UV_MAX, u)
            v.mul_(kv).trunc_().add_(u).add_(bias)
            lo, hi = torch.aminmax(v)
            if float(hi) > UV_MAX - 1 or float(lo) < -UV_MAX + 1:
                self.v_clipped += int((v.abs() > UV_MAX - 1).sum())
                v.clamp_(-UV_MAX + 1, UV_MAX - 1)
            if spiking:
                s = v > vth
                v.masked_fill_(s, 0.0)
                res[t] = s
            else:
                res[t] = v
        return res


def _shift(acc: torch.Tensor, e: int) -> torch.Tensor:
    """Lava's weight_exp shift of integer-valued acc: << e, or >> -e (floor), as
    a product with a power of two: exact in float32 too (only the exponent
    changes; the range is never near float32's)."""
    if e == 0:
        return acc
    y = acc * 2.0 ** e
    return y if e > 0 else y.floor_()


def _absmax(a: torch.Tensor) -> float:
    """max |a| in one pass, no temporary (0 for an empty tensor)."""
    if not a.numel():
        return 0.0
    lo, hi = torch.aminmax(a)
    return max(-float(lo), float(hi))


def _wrap32_if_needed(a: torch.Tensor) -> torch.Tensor:
    """Lava sums a_in over int32 channels: the int32 value, with one reduction
    to see whether any value leaves the range at all."""
    return _wrap32(a.to(torch.float64)) if _absmax(a) >= 2 ** 31 else a


MARGIN = 1e-6   # relative distance to a decision boundary below which the fast calibration defers


class FloatRun:
    """quantise.float_currents in torch: convolutions where the link is one
    (plan.Link.conv), float64 throughout. Summation order differs from
    scipy's, so values differ in the last bits; :meth:`observed` returns None
    (use the exact run) whenever a float-run spike decision lies within MARGIN
    of its threshold, and :func:`_near_boundary` does the same for the scale
    decisions, so both runs always lead to the same integer network."""

    def __init__(self, plan):
        self.plan, self.links = plan, []
        self.worst = {}    # input ranges -> {population: worst_current}
        for lk in plan.links:
            if lk.conv is not None and lk.relays == 0:
                w, stride, padding, in_shape = lk.conv
                op = _Conv(w, stride, padding, in_shape, exact32=False, rounded=False)
            else:
                op = _sparse(lk.matrix)
            self.links.append((lk.source, lk.target, op))

    @torch.no_grad()
    def observed(self, inputs: dict, strict: bool = True, outputs: dict | None = None):
        """{population: (max |a_in|, max |v|)}, or None where strict and a spike
        decision is within MARGIN of its threshold; ``outputs``: filled with
        every population's float values [n, T, B] (spikes 0/1, read-out v)."""
        plan = self.plan
        T, B = np.shape(next(iter(inputs.values())))[:2]
        vals, obs = {}, {}
        for name, p in plan.pops.items():
            if p.kind == "Input":
                x = np.asarray(inputs[name], dtype=np.float64).reshape(T * B, p.size)
                vals[name] = torch.from_numpy(x).t()
        for name, p in plan.pops.items():
            if p.kind == "Input":
                continue
            a = torch.zeros(p.size, T * B, dtype=torch.float64)
            for src, tgt, op in self.links:
                if tgt == name:
                    a += op(vals[src], T * B) if isinstance(op, _Conv) else op @ vals[src]
            a = a.view(p.size, T, B)
            u = torch.zeros(p.size, B, dtype=torch.float64)
            v = torch.zeros(p.size, B, dtype=torch.float64)
            bias = torch.from_numpy(np.asarray(p.bias, dtype=np.float64)).view(-1, 1)
            out = torch.zeros(p.size, T, B, dtype=torch.float64)
            vmax = 0.0
            for t in range(T):
                u = u * (1.0 - p.du) + a[:, t]
                v = v * (1.0 - p.dv) + u + bias
                if p.spiking:
                    if strict and bool(((v - p.vth).abs()
                                        <= MARGIN * max(abs(p.vth), 1.0)).any()):
                        return None
                    s = v > p.vth
                    v = torch.where(s, torch.zeros_like(v), v)
                    out[:, t] = s.to(torch.float64)
                else:
                    out[:, t] = v
                vmax = max(vmax, float(v.abs().max()) if v.numel() else 0.0)
            vals[name] = out.reshape(p.size, T * B)
            obs[name] = (float(a.abs().max()) if a.numel() else 0.0, vmax)
            if outputs is not None:
                outputs[name] = out
        return obs


def _near(x: float, y: float) -> bool:
    return abs(x - y) <= MARGIN * max(abs(x), abs(y))


def _near_boundary(plan, input_range, observed, scales=None, worst=None) -> bool:
    """worst: {population: worst_current} (computed here where not given)."""
    """True where a calibration decision on these float currents is within
    MARGIN of flipping: a scale at a power-of-two step (population_scale's
    candidates), or, for a built net, a covers() comparison."""
    from export.fixed_point import A_IN_LIMIT, V_LIMIT
    from hardware.lava.worker.quantise import GUARD, population_scale, worst_current
    worst = {} if worst is None else worst
    for name, (amax, vmax) in observed.items():
        if name not in worst:
            worst[name] = worst_current(plan, name, input_range)
        S, _ = population_scale(plan, name, input_range, observed, worst[name])
        for obs in ((amax * (1 + MARGIN), vmax * (1 + MARGIN)),
                    (amax * (1 - MARGIN), vmax * (1 - MARGIN))):
            moved = dict(observed)
            moved[name] = obs
            if population_scale(plan, name, input_range, moved, worst[name])[0] != S:
                return True
        if scales is not None:
            Sn = scales[name]
            if _near(GUARD * amax * Sn, A_IN_LIMIT) or _near(GUARD * vmax * Sn, V_LIMIT):
                return True
    return False


def host_plan(path, subgraph):
    """The plan of a NIR (sub)graph, shared by everything on the host side of one
    process (the fit check, calibration, the emulator): composing the conv
    matrices takes seconds per graph, so a file is planned once while unchanged."""
    import os
    p = os.path.abspath(str(path))
    return _plan_cached(p, os.path.getmtime(p) if os.path.exists(p) else None, subgraph)


@functools.lru_cache(maxsize=4)
def _plan_cached(path, mtime, subgraph):
    from hardware.lava.worker.plan import load_graph, plan_graph
    g, dt, _T = load_graph(path, subgraph)
    return plan_graph(g, dt)


class Emulator:
    """Drop-in for the Lava worker's fixed_pt runs: the same plans, the same
    per-call calibration and the same net cache rule (a net is reused while a
    call's float currents fit its scales, else rebuilt from the largest
    currents seen; least recently used nets beyond ``max_cache`` dropped), so a
    sequence of calls gets the scales the worker would use."""

    def __init__(self, weights: str = "single", max_cache: int = 4):
        self.weights, self.max_cache = weights, max_cache
        self.frozen = {}   # frozen scales: (path, subgraph, record, calibration) -> net
        self.plans, self.nets, self.float_runs = {}, OrderedDict(), {}
        self.exact_calibrations = 0   # calls where the fast float run deferred to the exact one
        self.timing = {"run_s": 0.0, "calibrate_s": 0.0, "build_s": 0.0, "calls": 0}

    def plan(self, path: str, subgraph):
        key = (str(path), subgraph)
        if key not in self.plans:
            self.plans[key] = host_plan(path, subgraph)
        return self.plans[key]

    def net(self, path, subgraph, inputs: dict, record=None) -> FixedPointNet:
        from hardware.lava.worker.quantise import float_currents, input_ranges, merge_observed
        t0 = time.perf_counter()
        plan = self.plan(path, subgraph)
        T, B = np.shape(next(iter(inputs.values())))[:2]
        rng = input_ranges(inputs)
        key = (str(path), subgraph, int(B), int(T), tuple(record) if record else None,
               tuple(sorted(rng.items())), self.weights)
        net = self.nets.pop(key, None)
        fast = self.float_runs.get((str(path), subgraph))
        if fast is None:
            fast = self.float_runs[(str(path), subgraph)] = FloatRun(plan)
        observed = fast.observed(inputs)
        worst = fast.worst.setdefault(tuple(sorted(rng.items())), {})
        if observed is None or _near_boundary(
                plan, rng, observed if net is None else merge_observed(observed, net.observed),
                None if net is None else net.scales, worst):
            observed = float_currents(plan, inputs)     # the worker's own run, exactly
            self.exact_calibrations += 1
        t1 = time.perf_counter()
        if net is not None and not net.covers(observed):
            observed = merge_observed(observed, net.observed)
            net = None
        if net is None:
            while len(self.nets) >= max(self.max_cache, 1):
                self.nets.popitem(last=False)
            net = FixedPointNet(plan, rng, observed, self.weights)
        self.nets[key] = net
        self.timing["calibrate_s"] += t1 - t0
        self.timing["build_s"] += time.perf_counter() - t1
        return net

    def frozen_net(self, path, subgraph, calibration: dict) -> FixedPointNet:
        """The net of a calibration (quantise.check_calibration's form): built
        once, never rescaled, whatever the inputs (what the worker does with it)."""
        import json

        from hardware.lava.worker.quantise import check_calibration
        key = (str(path), subgraph, json.dumps(calibration, sort_keys=True))
        if key not in self.frozen:
            t0 = time.perf_counter()
            plan = self.plan(path, subgraph)
            rng, observed = check_calibration(plan, calibration)
            self.frozen[key] = FixedPointNet(plan, rng, observed, self.weights)
            self.timing["build_s"] += time.perf_counter() - t0
        return self.frozen[key]

    def run(self, path, subgraph, inputs: dict, record=None, calibration=None) -> dict:
        """{node: [T, B, *shape]} in aligned time (see FixedPointNet.run);
        ``calibration``: frozen scales, else the worker's per-call calibration."""
        inputs = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
        net = (self.net(path, subgraph, inputs, record) if calibration is None else
               self.frozen_net(path, subgraph, calibration))
        t0 = time.perf_counter()
        out = net.run(inputs, record)
        self.timing["run_s"] += time.perf_counter() - t0
        self.timing["calls"] += 1
        self.last_scales = dict(net.scales)
        return out


def first_divergence(got: dict, ref: dict, order=None):
    """(node, step, differing entries at that step) of the first layer (in
    ``order``, else ref's) and time step where two aligned records part; None
    when every recorded node is identical."""
    for name in (order or list(ref)):
        if name not in ref or name not in got:
            continue
        a, b = np.asarray(got[name]), np.asarray(ref[name])
        if a.shape != b.shape:
            return name, 0, -1
        d = (a != b).reshape(a.shape[0], -1).sum(axis=1)
        steps = np.nonzero(d)[0]
        if steps.size:
            return name, int(steps[0]), int(d[steps[0]])
    return None
