"""The written NIR graph of a quantization-aware ("loihi8") checkpoint, rounded
exactly onto the 8-bit grid the Lava mapping writes (numpy + nir).

Training (spikediff/qat.py) rounds each synapse's weights in float32; this
rounds the float64 weights the export composes (folded batch norm, composed
embeddings and codebook, phase-stacked transposed convolutions) with the same
rule, so that every link of the graph fits one 8-bit synapse exactly:
gain * w on the grid export.fixed_point.fake_quant_grid gives for the link's
largest |gain * w|, where gain is the weight scale the mapping gives the
target neuron (hardware.lava.worker.plan's table: r dt / tau for LIF and LI,
r dt for I, r for IF).
"""
from __future__ import annotations

import numpy as np

from export.fixed_point import fake_quant_grid

SYNAPSES = ("Conv2d", "Affine", "Linear")


def _gain(node, dt: float) -> float:
    kind = type(node).__name__
    r = np.asarray(node.r, dtype=np.float64)
    if kind in ("LIF", "LI"):
        g = r * dt / np.asarray(node.tau, dtype=np.float64)
    elif kind == "I":
        g = r * dt
    elif kind == "IF":
        g = r
    else:
        raise ValueError(f"no 8-bit rounding rule for synapses into {kind}")
    g = np.unique(np.round(g.reshape(-1), 15))
    if g.size != 1:
        raise ValueError(f"{kind} node with per-neuron gains {g[:3]}...: one gain per layer needed")
    return float(g[0])


def round_weights(w, gain: float) -> np.ndarray:
    """w with gain * w on its 8-bit grid (numpy round: half to even, as the mapping)."""
    w = np.asarray(w, dtype=np.float64)
    g = w * gain
    nz = g[g != 0]
    if not nz.size:
        return w
    step, _ = fake_quant_grid(float(np.abs(nz).max()), bool(nz.min() < 0 < nz.max()))
    return np.round(g / step) * step / gain


def quantize_graph(graph, dt: float | None = None):
    """Round, in place, every synapse that feeds a neuron node of a flat NIR graph
    (and of its nested graphs); returns the graph."""
    dt = float(np.asarray((graph.metadata or {}).get("dt", dt)))
    nodes = graph.nodes
    for name, node in nodes.items():
        if type(node).__name__ == "NIRGraph":
            quantize_graph(node, dt)
    for src, dst in graph.edges:
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None or type(s).__name__ not in SYNAPSES:
            continue
        if type(d).__name__ in SYNAPSES:
            raise ValueError(f"synapse {src!r} feeds synapse {dst!r}: round the composed link")
        if type(d).__name__ in ("Output", "Flatten", "Scale"):
            continue   # not a neuron: nothing the mapping writes as a Lava link here
        s.weight = round_weights(s.weight, _gain(d, dt)).astype(np.asarray(s.weight).dtype)
    return graph
