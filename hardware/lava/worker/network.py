"""Lava process graph of a plan (Lava environment): :class:`LavaNet`.

Neurons are Lava's LIFReset, links its Sparse (fixed_pt: the 8-bit parts of
``quantise.fixed_params``), inputs and recordings the file-backed processes
of ``processes``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from export.fixed_point import GRADED_BITS, V_SHIFT, quantise_input
from hardware.lava.worker.plan import MappingError, Plan
from hardware.lava.worker.processes import FileSink, FileSource, VarProbe, save_atomic
from hardware.lava.worker.quantise import check_fits, covers, fixed_params, lif_params


class LavaNet:
    """Lava processes for a plan, batch B, T input steps; reusable across runs.

    Every call runs N = T + max_lag steps.  Reuse without Var.set: neurons are
    LIFReset processes that zero u and v at in-call step lag+1, the first step
    at which their (lagged) input is valid, so whatever was left in neurons and
    synaptic buffers by the previous call (or by the junk steps before the
    window) is wiped; inputs and recordings go through .npy files (FileSource,
    FileSink, VarProbe) because Var.get/.set of large arrays is very slow.

    fixed_pt: ``observed`` ({population: (max |a_in|, max |v|)} from
    :func:`float_currents`) sets the scales; :meth:`covers` says whether a
    later call's currents still fit them.  ``weights``: "single" (one 8-bit
    synapse per connection; refused for weights that do not fit,
    quantise.check_fits) or "split" (two).
    """

    def __init__(self, plan: Plan, batch: int, T: int, mode: str = "floating_pt",
                 record=None, input_range=None, observed=None, weights="single"):
        if mode not in ("floating_pt", "fixed_pt"):
            raise MappingError(f"mode must be floating_pt or fixed_pt, got {mode!r}")
        from lava.proc.lif.process import LIFReset
        from lava.proc.sparse.process import Sparse

        t0 = time.perf_counter()
        self.plan, self.B, self.T, self.mode = plan, int(batch), int(T), mode
        self.N = self.T + plan.max_lag            # Lava steps per run
        self.fixed = mode == "fixed_pt"
        self.input_range = dict(input_range or {})
        self.observed = dict(observed) if observed else None
        record = list(record) if record else [n for n, p in plan.pops.items() if p.kind != "Input"] + list(plan.alias)
        for r in record:
            base = plan.alias.get(r, r)
            if base not in plan.pops or plan.pops[base].kind == "Input":
                raise MappingError(f"cannot record {r!r}: not a neuron or output node of the graph")
        self.record = record
        B, N = self.B, self.N
        eyeB = sp.identity(B, format="csr")
        self.weights = weights
        if self.fixed:
            if weights == "single":
                check_fits(plan)
            self.scales, qlinks, qbias, self.worst = fixed_params(plan, self.input_range,
                                                                  self.observed, weights)
        self.dir = tempfile.mkdtemp(prefix="spikediff-lavanet-")
        self.procs, self.sources, self.neurons, self.synapses = [], {}, {}, []
        self.recorders, self.paths = {}, {}

        def mk_sparse(M, graded, e=0):
            W = sp.kron(eyeB, M, format="csr")
            kw = dict(weights=W, num_message_bits=GRADED_BITS if graded else 0)
            if self.fixed:
                kw.update(weight_exp=int(e), num_weight_bits=8)
            s = Sparse(**kw)
            self.synapses.append(s)
            self.procs.append(s)
            return s

        for i, (name, p) in enumerate(plan.pops.items()):
            n = p.size * B
            if p.kind == "Input":
                path = os.path.join(self.dir, f"in{i}.npy")
                self.paths[name] = path
                src = FileSource(shape=(n,), steps=N, path=path)
                self.sources[name] = src
                self.procs.append(src)
                continue
            if self.fixed:
                kw = lif_params(p, self.scales[name], qbias[name])
                kw["bias_mant"] = np.tile(kw["bias_mant"], B)
            else:
                kw = dict(du=p.du, dv=p.dv, vth=p.vth, bias_mant=np.tile(p.bias, B))
            lif = LIFReset(shape=(n,), name=name, reset_interval=N, reset_offset=(p.lag + 1) % N, **kw)
            self.neurons[name] = lif
            self.procs.append(lif)

        for i, lk in enumerate(plan.links):
            src = plan.pops[lk.source]
            out = self.sources[lk.source].s_out if src.kind == "Input" else self.neurons[lk.source].s_out
            graded = src.kind == "Input"
            for _ in range(lk.relays):  # identity delay stages
                relay = mk_sparse(sp.identity(src.size, format="csr"), graded, 0)
                out.connect(relay.s_in)
                out, graded = relay.a_out, True
            for M, e in (qlinks[i] if self.fixed else [(lk.matrix, 0)]):
                syn = mk_sparse(M, graded, e)  # fixed_pt: coarse + residual parts
                out.connect(syn.s_in)
                syn.a_out.connect(self.neurons[lk.target].a_in)

        for i, r in enumerate(self.record):
            base = plan.alias.get(r, r)
            p = plan.pops[base]
            lif = self.neurons[base]
            path = os.path.join(self.dir, f"rec{i}.npy")
            if p.spiking:
                rec = FileSink(shape=(p.size * B,), steps=N, path=path)
                lif.s_out.connect(rec.a_in)
            else:
                rec = VarProbe(var=lif.v, steps=N, path=path)
            self.recorders[r] = (rec, path)
            self.procs.append(rec)

        self.anchor = next(iter(self.neurons.values()))
        self.runs = 0
        self.started = False
        self.timing = {"build_s": time.perf_counter() - t0}

    def covers(self, observed) -> bool:
        """fixed_pt: True while currents observed on new inputs stay GUARD below
        the ranges this net's scales were chosen for (|a_in| int16, |v| 24-bit)."""
        return not self.fixed or covers(self.scales, self.worst, observed)

    def _quant_input(self, name, x):
        if not self.fixed:
            return x.astype(np.float64)
        return quantise_input(x, self.scales[name])

    def run(self, inputs: dict) -> dict:
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.magma.core.run_conditions import RunSteps

        B, T, N = self.B, self.T, self.N
        t0 = time.perf_counter()
        missing = set(self.sources) - set(inputs)
        if missing:
            raise MappingError(f"no input data for input node(s) {sorted(missing)}")
        for name in self.sources:
            x = np.asarray(inputs[name], dtype=np.float64)
            p = self.plan.pops[name]
            if x.ndim < 2 or x.shape[0] != T or x.shape[1] != B or int(np.prod(x.shape[2:])) != p.size:
                raise MappingError(
                    f"input {name!r}: expected [T={T}, B={B}, *{p.shape}], got {list(x.shape)}")
            d = np.zeros((B * p.size, N))
            d[:, :T] = x.reshape(T, B * p.size).T
            save_atomic(self.paths[name], self._quant_input(name, d))
        for _, path in self.recorders.values():
            if os.path.exists(path):
                os.unlink(path)
        t1 = time.perf_counter()
        self.started = True
        self.anchor.run(condition=RunSteps(num_steps=N),
                        run_cfg=Loihi2SimCfg(select_tag=self.mode))
        t2 = time.perf_counter()
        out = {}
        for r, (rec, path) in self.recorders.items():
            base = self.plan.alias.get(r, r)
            p = self.plan.pops[base]
            for _ in range(200):  # the sink writes at its last step; normally already there
                if os.path.exists(path):
                    break
                time.sleep(0.01)
            d = np.load(path).reshape(B * p.size, N)
            a = d.T.reshape(N, B, *p.shape)
            if p.spiking:
                out[r] = (a != 0).astype(np.uint8)
            else:
                out[r] = a / (self.scales[base] * 2.0 ** V_SHIFT) if self.fixed else a
        t3 = time.perf_counter()
        key = "first_run_s" if self.runs == 0 else "run_s"
        self.timing.update({"set_s": t1 - t0, key: t2 - t1, "get_s": t3 - t2, "steps": N})
        self.runs += 1
        return out

    def lags(self):
        return {r: self.plan.lag_of(r) for r in self.record}

    def stop(self):
        try:
            if self.started:
                t0 = time.perf_counter()
                try:
                    self.anchor.stop()
                finally:
                    self.started = False
                    self.timing["stop_s"] = time.perf_counter() - t0
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
