"""Persistent Lava worker: ``$SPIKEDIFF_LAVA_PY -m hardware.lava.worker``.

Runs in the Lava environment (Python 3.10); imports only stdlib, numpy, nir,
lava and this package (plan, quantise, network).

Protocol: one JSON object per line on stdin, one JSON reply per line on the
worker's protocol stdout (anything else the process or Lava prints goes to
stderr, so the channel stays clean).  The first line the worker writes is
``{"ready": true, ...}`` once Lava is imported.

Requests::

    {"id": 1, "cmd": "run", "nir": "/path/model.nir", "subgraph": "denoiser" | null,
     "mode": "floating_pt" | "fixed_pt", "record": ["lif1", ...] | null,
     "weights": "single" | "split",  # fixed_pt: one 8-bit synapse per connection or two
     "calibration": {...} | null,   # fixed_pt: frozen scales (quantise.check_calibration);
                                    # null: per-call calibration
     "inputs": "/tmp/req.npz",      # one array per Input node: [T, B, *input_shape]
     "output": "/tmp/res.npz"}
    {"id": 2, "cmd": "ping"}     {"id": 3, "cmd": "shutdown"}
    {"id": 4, "cmd": "exit", "code": 3}          # test hook: exit at once
    {"id": 5, "cmd": "sleep", "seconds": 5}      # test hook
    {"id": 6, "cmd": "syspath"}   # test hook: {"sys_path": [...], "tmpdir": ..., "modules": {name: file}}

Replies: ``{"id": ..., "ok": true, "output": path, "lags": {node: lag},
"steps": N, "timing": {...}, "scales": {population: S} (fixed_pt), "calibration":
"frozen" | "per-call" (fixed_pt), "input_clipped": analog input values the frozen
input range saturated}`` or ``{"id": ..., "ok": false, "error": msg,
"type": "MappingError" | ...}``.  The result npz holds one array per recorded
node, ``[T + max_lag, B, *shape]``: uint8 spikes for LIF/IF/CubaLIF, float
voltages for LI and for synapse-fed Output nodes; node X at Lava step k
corresponds to reference step k - lag[X] (so ``out[lag:lag + T]`` aligns).

Process graphs are cached per (file, mtime, subgraph, mode, B, T, record, input
range or calibration): a later call with the same shapes resets state and
re-runs without rebuilding.  fixed_pt with a calibration (frozen scales, what a
chip holds): the net is built from it once and never rescaled.  Without
(per-call): only while the call's currents (a float run in numpy) fit the net's
fixed-point scales, else it is rebuilt with smaller ones.
``SPIKEDIFF_LAVA_CACHE`` (default 2) bounds the cache.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict

# numpy, nir, Lava and this package's modules are imported once fd 1 is
# redirected (main), so nothing they print can reach the protocol stream.


def _protocol_stream():
    """Keep the real stdout for replies; send fd 1 (prints, Lava, children) to stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


class Worker:
    def __init__(self, out):
        self.out = out
        self.nets = OrderedDict()
        self.graphs = {}
        self.max_cache = int(os.environ.get("SPIKEDIFF_LAVA_CACHE", "2"))

    def reply(self, obj):
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def _graph(self, path, subgraph):
        from hardware.lava.worker.plan import load_graph, plan_graph
        key = (os.path.abspath(path), os.path.getmtime(path) if os.path.exists(path) else None, subgraph)
        if key not in self.graphs:
            g, dt, T = load_graph(path, subgraph)   # dt: the graph's own metadata
            self.graphs[key] = (plan_graph(g, dt), T)
        return key, self.graphs[key]

    def run(self, req):
        import numpy as np
        from hardware.lava.worker.network import LavaNet
        from hardware.lava.worker.plan import MappingError
        from hardware.lava.worker.quantise import (check_calibration, float_currents,
                                                   input_clipped, input_ranges, merge_observed)
        t0 = time.perf_counter()
        key, (plan, _T) = self._graph(req["nir"], req.get("subgraph"))
        with np.load(req["inputs"]) as f:
            inputs = {k: f[k] for k in f.files}
        shapes = {k: v.shape for k, v in inputs.items()}
        if not inputs:
            raise MappingError("request has no input arrays")
        T, B = next(iter(shapes.values()))[:2]
        mode = req.get("mode", "floating_pt")
        record = req.get("record") or None
        weights = req.get("weights") or "single"
        rng, observed, cal = {}, None, req.get("calibration")
        frozen = mode == "fixed_pt" and cal is not None
        if frozen:   # scales fixed by the calibration: no float run, never rescaled
            rng, observed = check_calibration(plan, cal)
        elif mode == "fixed_pt":  # quantisation range per input, powers of two
            rng = input_ranges(inputs)
            # the currents of a float run of these inputs set (and re-check)
            # the fixed-point scales: see quantise.float_currents
            observed = float_currents(plan, inputs)
        nkey = (key, mode, int(B), int(T), tuple(record) if record else None,
                tuple(sorted(rng.items())), weights,
                json.dumps(cal, sort_keys=True) if frozen else None)
        t1 = time.perf_counter()
        net = self.nets.pop(nkey, None)
        if net is not None and not frozen and observed is not None and not net.covers(observed):
            # larger currents than the net was scaled for: rescale (S only
            # shrinks, as the calibration keeps the largest currents seen)
            observed = merge_observed(observed, net.observed)
            net.stop()
            net = None
        built = net is None
        if net is None:
            while len(self.nets) >= max(self.max_cache, 1):
                _, old = self.nets.popitem(last=False)
                old.stop()
            net = LavaNet(plan, B, T, mode, record, rng, observed, weights)
        try:
            out = net.run(inputs)
        except BaseException:
            net.stop()
            raise
        self.nets[nkey] = net
        np.savez(req["output"], **out)
        timing = dict(net.timing)
        timing.update({"load_s": t1 - t0, "total_s": time.perf_counter() - t0, "built": built})
        clipped = sum(input_clipped(x, net.scales[k]) for k, x in inputs.items()) if frozen else 0
        return {"output": req["output"], "lags": net.lags(), "steps": net.N,
                "max_lag": plan.max_lag, "timing": timing,
                "scales": dict(net.scales) if net.fixed else None,
                "calibration": ("frozen" if frozen else "per-call") if net.fixed else None,
                "input_clipped": clipped}

    def close(self):
        while self.nets:
            _, net = self.nets.popitem()
            try:
                net.stop()
            except Exception:
                traceback.print_exc()

    def serve(self, inp):
        for line in inp:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
            except json.JSONDecodeError as e:
                self.reply({"ok": False, "error": f"bad request line: {e}", "type": "ProtocolError"})
                continue
            rid = req.get("id")
            cmd = req.get("cmd")
            try:
                if cmd == "run":
                    res = self.run(req)
                elif cmd == "ping":
                    res = {"pid": os.getpid()}
                elif cmd == "shutdown":
                    self.close()
                    self.reply({"id": rid, "ok": True})
                    return
                elif cmd == "exit":  # test hook: simulate a crash
                    print("worker: exiting on request", file=sys.stderr, flush=True)
                    os._exit(int(req.get("code", 3)))
                elif cmd == "sleep":  # test hook: simulate a hang
                    time.sleep(float(req.get("seconds", 1)))
                    res = {}
                elif cmd == "syspath":  # test hook: where imports come from
                    import tempfile
                    res = {"sys_path": list(sys.path), "tmpdir": tempfile.gettempdir(),
                           "modules": {k: getattr(m, "__file__", None)
                                       for k, m in list(sys.modules.items())
                                       if k.startswith(("hardware", "export")) or k in ("numpy", "nir", "lava")}}
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                self.reply({"id": rid, "ok": True, **res})
            except Exception as e:
                traceback.print_exc()
                self.reply({"id": rid, "ok": False, "error": str(e), "type": type(e).__name__})


def main():
    out = _protocol_stream()
    t0 = time.perf_counter()
    import lava.magma.core.run_configs  # noqa: F401  (fail early if Lava is broken)
    from hardware.lava.worker import network  # noqa: F401  (Lava's processes)
    w = Worker(out)
    w.reply({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0],
             "import_s": time.perf_counter() - t0})
    try:
        w.serve(sys.stdin)
    finally:
        w.close()


# Lava's process-model discovery executes every file in the folder of a
# process's module under its bare name, this one as "__main__" too: only
# `python -m hardware.lava.worker` (spec hardware.lava.worker.__main__) serves.
if __name__ == "__main__" and __spec__ is not None and __spec__.name != "__main__":
    main()
