"""`spikediff-export --to netx`: lava-dl netx hdf5 networks of the subgraphs it can express.

netx (``lava.lib.dl.netx.hdf5.Network``) loads *sequential* networks: an input
layer, then conv/dense blocks, each one synapse + one population of CUBA
neurons, every block fed only by the block before it. It runs in fixed point
(its block models are ``fixed_pt`` only), so the export is quantised.

Expressible here (from the NIR export, export.nir_graph):

* ``decoder``: one-hot code grid (binary spikes) -> codebook 1x1 conv and
  spike-generator 1x1 conv composed into one 1x1 conv block -> decoder.i
  blocks in the export's exact polyphase form (3x3 convs on phase-stacked
  maps at the latent grid). Its final ConvTranspose read-out is an analog LI
  read-out (PSP over T, then tanh on the host), not a spiking population:
  left out (the host reads the last block's spikes).
* ``denoiser``: one-hot tokens + one-hot t (binary spikes) -> the first 3x3
  conv block (the embeddings already folded into it by the NIR export,
  spikediff/fold.py) -> layers.1.. blocks. The
  head reads concat(last, first) - a skip connection netx cannot express - and
  feeds an analog mean-over-T read-out: left out.

Refused: ``encoder`` (its first layer is fed analog image currents, not spikes;
the feature read-out is two analog read-outs summing), and any graph whose
populations are not a single chain.

Neurons: the NIR LIF (v <- v + dt/tau (r I - v), threshold 1, reset 0) is
netx CUBA with iDecay = 4096 (no current memory), vDecay = 4096 dt/tau, and
weights and bias scaled by r dt/tau; dt is the graph's own (its metadata).
Quantisation per block (bit widths and rounding from export.fixed_point, the
rules of our Lava mapping): one power-of-two scale S (1.0 = S units), the
largest with |weights| <= 254 (8-bit mixed-sign mantissas), |bias| <= 4095
(13-bit bias mantissa, bias_exp 6), |input sum| <= 2**15 - 1 (int16 a_in) and
threshold mantissa <= 2**17 - 1. The same quantised network, written back as float NIR
(``reference_graph``), runs on our mapper in floating_pt to identical spikes:
with T + depth <= 6 every fixed-point halving of v is exact.

Layout: netx stores shapes as [C, H, W] and reads them as (W, H, C); inputs
to the netx Network are (W, H, C) arrays per step.

Imports export's graph builder and executor and export.fixed_point (numpy
only); nothing imports it but the CLI (export.cli).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from export.fixed_point import (A_IN_LIMIT, BIAS_MANT_MAX, V_LIMIT, WEIGHT_MAX_MIXED, decay,
                                  pow2_floor, to_int)
from spikediff.errors import SpikediffError

SUPPORTED = ("decoder", "denoiser")
REFUSED = {
    "encoder": "its first layer is fed analog image currents (not spikes) and its feature "
               "read-out is two analog read-outs summing into one output; netx blocks "
               "take spikes and chain one population into the next",
}
LEFT_OUT = {
    "decoder": "read-out (ConvTranspose -> PSP over T, an analog LI read-out; tanh on host)",
    "denoiser": "head over concat(last, first) (a skip connection) -> mean-over-T analog "
                "read-out",
}


class NetxExportError(SpikediffError):
    pass


def _graph_of(model_or_graph):
    import nir
    if isinstance(model_or_graph, (str, Path)):
        return nir.read(str(model_or_graph))
    if isinstance(model_or_graph, nir.NIRGraph):
        return model_or_graph
    from export.nir_graph import build_graph
    return build_graph(model_or_graph, np.float64)


def _chain(sub):
    """[(lif name, weight [O,C,kh,kw], bias [O], stride, padding, node)] of a LIF chain."""
    import nir

    from export.nir_exec import spiking_view, topological_order
    view = spiking_view(sub)
    preds = {n: [a for a, b in view.edges if b == n] for n in view.nodes}
    layers, prev = [], "input"
    for name in topological_order(view):
        node = view.nodes[name]
        if not isinstance(node, nir.LIF):
            continue
        syn = preds[name]
        if len(syn) != 1 or not isinstance(view.nodes[syn[0]], nir.Conv2d):
            raise NetxExportError(f"LIF {name!r} is not fed by exactly one Conv2d")
        conv = view.nodes[syn[0]]
        W = np.asarray(conv.weight, np.float64)
        b = np.asarray(conv.bias, np.float64).reshape(-1)
        src = preds[syn[0]]
        # 1x1 convs between the previous population and this synapse compose into it
        if len(src) == 1 and src[0] == prev:
            pass
        elif all(isinstance(view.nodes[s], nir.Conv2d) and preds[s] == [prev] for s in src):
            E = 0
            for s in src:
                e = view.nodes[s]
                ew = np.asarray(e.weight, np.float64)
                if ew.shape[2:] != (1, 1) or np.any(np.asarray(e.bias)) or \
                        np.any(np.asarray(e.stride) != 1) or np.any(np.asarray(e.padding) != 0):
                    raise NetxExportError(f"{s!r} into {syn[0]!r} is not a bias-free 1x1 conv")
                E = E + ew[:, :, 0, 0]
            W = np.einsum("oekl,ec->ockl", W, E)
        else:
            raise NetxExportError(
                f"{name!r} is fed by {src} - not a single chain from {prev!r}; netx networks "
                "are sequential")
        a = _dt(view) / float(np.asarray(node.tau).flat[0])
        for p in ("tau", "r", "v_threshold", "v_reset", "v_leak"):
            v = np.asarray(getattr(node, p))
            if not np.all(v == v.flat[0]):
                raise NetxExportError(f"{name!r}: {p} varies across neurons")
        if float(np.asarray(node.v_reset).flat[0]) != 0 or float(np.asarray(node.v_leak).flat[0]) != 0:
            raise NetxExportError(f"{name!r}: v_reset and v_leak must be 0")
        r = float(np.asarray(node.r).flat[0])
        layers.append(dict(name=name, W=W * a * r, b=b * a * r, a=a, r=r,
                           vth=float(np.asarray(node.v_threshold).flat[0]),
                           stride=tuple(int(x) for x in np.broadcast_to(conv.stride, (2,))),
                           padding=tuple(int(x) for x in np.broadcast_to(conv.padding, (2,))),
                           in_hw=tuple(int(x) for x in conv.input_shape),
                           out_shape=tuple(int(x) for x in conv.output_type["output"])))
        prev = name
    if not layers:
        raise NetxExportError("no LIF layers")
    return view, layers


def _dt(graph) -> float:
    """The graph's time step (its metadata's "dt"), as the Lava worker reads it."""
    if "dt" not in (graph.metadata or {}):
        raise NetxExportError("the graph has no 'dt' in its metadata")
    return float(np.asarray(graph.metadata["dt"]))


def quantise(layer: dict) -> dict:
    """Power-of-two scale S and integer weight/bias/threshold mantissas of one block."""
    W, b = layer["W"], layer["b"]
    cands = [V_LIMIT / max(layer["vth"], 1e-12)]
    if np.abs(W).max() > 0:
        cands.append(WEIGHT_MAX_MIXED / np.abs(W).max())
        cands.append(A_IN_LIMIT / (np.abs(W).reshape(W.shape[0], -1).sum(1).max()
                                   + np.abs(b).max()))
    if np.abs(b).max() > 0:
        cands.append(BIAS_MANT_MAX / np.abs(b).max())
    S = pow2_floor(min(cands))
    q = dict(layer)
    q.update(S=S, Wq=to_int(W, S), bq=to_int(b, S), vth_mant=int(round(layer["vth"] * S)),
             vdecay=decay(layer["a"]))
    return q


def reference_graph(view, qlayers, T: int):
    """The quantised network as a float NIR chain (what netx computes, exactly)."""
    import nir
    nodes = {"input": view.nodes["input"]}
    edges, prev = [], "input"
    for q in qlayers:
        g = q["a"] * q["r"] * q["S"]
        conv = nir.Conv2d(input_shape=q["in_hw"], weight=q["Wq"] / g, stride=q["stride"],
                          padding=q["padding"], dilation=1, groups=1, bias=q["bq"] / g)
        shp = q["out_shape"]
        nodes[q["name"] + ".synapse"] = conv
        lif = view.nodes[q["name"]]
        nodes[q["name"]] = nir.LIF(tau=np.asarray(lif.tau), r=np.asarray(lif.r),
                                   v_leak=np.zeros(shp), v_reset=np.zeros(shp),
                                   v_threshold=np.full(shp, q["vth_mant"] / q["S"]))
        edges += [(prev, q["name"] + ".synapse"), (q["name"] + ".synapse", q["name"])]
        prev = q["name"]
    nodes["output"] = nir.Output(output_type=np.array(qlayers[-1]["out_shape"]))
    edges.append((prev, "output"))
    md = dict(view.metadata)
    md.update(T=int(T), view="netx-quantised spiking chain")
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md)


def export_netx(model_or_graph, out_path, subgraph: str = "denoiser") -> dict:
    """Write one subgraph as a netx hdf5 file; returns a description (and the reference)."""
    import h5py
    g = _graph_of(model_or_graph)
    if subgraph in REFUSED:
        raise NetxExportError(f"netx: subgraph {subgraph!r} is not exported: {REFUSED[subgraph]}")
    if subgraph not in SUPPORTED or subgraph not in g.nodes:
        raise NetxExportError(f"netx: unknown subgraph {subgraph!r} (exportable: "
                              f"{', '.join(SUPPORTED)})")
    sub = g.nodes[subgraph]
    try:
        view, layers = _chain(sub)
    except NetxExportError as e:
        raise NetxExportError(f"netx: subgraph {subgraph!r}: {e}") from None
    q = [quantise(x) for x in layers]
    in_shape = [int(x) for x in np.asarray(view.nodes["input"].input_type["input"]).reshape(-1)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        L = f.create_group("layer")
        g0 = L.create_group("0")
        g0.create_dataset("type", data="input")
        g0.create_dataset("shape", data=np.array(in_shape))
        for i, x in enumerate(q, start=1):
            gl = L.create_group(str(i))
            gl.create_dataset("type", data="conv")
            gl.create_dataset("shape", data=np.array(x["out_shape"]))
            gl.create_dataset("weight", data=x["Wq"].astype(np.float64))
            gl.create_dataset("bias", data=x["bq"].astype(np.float64))
            gl.create_dataset("stride", data=np.array(x["stride"]))
            gl.create_dataset("padding", data=np.array(x["padding"]))
            gl.create_dataset("dilation", data=np.array([1, 1]))
            gl.create_dataset("groups", data=1)
            n = gl.create_group("neuron")
            n.create_dataset("type", data="CUBA")
            n.create_dataset("iDecay", data=4096)
            n.create_dataset("vDecay", data=x["vdecay"])
            n.create_dataset("vThMant", data=x["vth_mant"])
            n.create_dataset("refDelay", data=1)
            n.create_dataset("gradedSpike", data=False)
        f.attrs["spikediff"] = json.dumps({"subgraph": subgraph, "layers": [x["name"] for x in q],
                                           "scales": [x["S"] for x in q]})
    os.replace(tmp, out_path)
    T = int(sub.metadata["T"])
    return {"subgraph": subgraph, "path": str(out_path), "input_shape": in_shape, "T": T,
            "layers": [{"name": x["name"], "shape": list(x["out_shape"]), "scale": x["S"],
                        "vThMant": x["vth_mant"], "max_weight": int(np.abs(x["Wq"]).max()),
                        "max_bias": int(np.abs(x["bq"]).max())} for x in q],
            "left_out": LEFT_OUT.get(subgraph), "reference_graph": reference_graph(view, q, T)}


def export(model, out, force: bool = False) -> str:
    """`spikediff-export --to netx`: a folder with decoder.net, denoiser.net and netx.json."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NetxExportError(f"{out} exists and is not a folder")
    from spikediff.cliutil import check_outputs
    check_outputs([out / f"{part}.net" for part in SUPPORTED] + [out / "netx.json"], force)
    g = _graph_of(model)
    out.mkdir(parents=True, exist_ok=True)
    summary, lines = {"refused": REFUSED, "subgraphs": {}}, []
    for part in SUPPORTED:
        path = out / f"{part}.net"
        info = export_netx(g, path, part)
        info.pop("reference_graph")
        summary["subgraphs"][part] = info
        lines.append(f"wrote {path}: {len(info['layers'])} conv+CUBA blocks "
                     f"({', '.join(x['name'] for x in info['layers'])}); left out: "
                     f"{info['left_out']}")
    (out / "netx.json").write_text(json.dumps(summary, indent=2))
    lines.append(f"not exported: encoder ({REFUSED['encoder']})")
    lines.append(f"wrote {out / 'netx.json'}")
    return "\n".join(lines)
