"""What an exported NIR file means, as structured metadata, and its check on reading.

NIR fixes the nodes; how a graph is stepped in discrete time (dt, integration rule,
delays, T, input encoding, when outputs are read, what the host does between
calls) is left to metadata. These keys say it, so that a reader need not parse
prose. docs/nir.md holds the same schema for users. Every part graph (encoder,
decoder, denoiser; the top-level graph of a `--part` file) carries:

    format            "spikediff-nir/2"
    part              "encoder" | "decoder" | "denoiser" (top level of a whole file: "model")
    dt                seconds per step (float > 0)
    T                 steps per call (int >= 1); inputs are repeated at every step
    integration       "forward_euler": LIF v <- v + dt/tau (v_leak - v + r I); LI the same
                      without spikes; I v <- v + dt r I
    threshold_test    "greater": a spike where v > v_threshold
    reset             "hard": v = v_reset after a spike
    state_init        "zero": every v starts at 0 at each call
    edge_delay_steps  0: a spike at step t reaches the next layer at step t
    input             {node, shape, encoding: "analog" | "spikes", ...encoding fields}
    readout           {nodes: [Output names], at: "last_step" | "every_step"}
    form              "full" (readouts are LI/I nodes) | "spiking" (only synapses and LIF;
                      readouts are host records)
    host              ordered typed records {"0": {"op": ...}, "1": ...} (HOST_OPS)
    weights_sha256    the checkpoint weights the file came from

`check(graph)` compares these with the graph: a file whose metadata disagrees with its
nodes (an Input shape, a missing readout node, an unknown op) is refused in one line.
"""
from __future__ import annotations

import nir
import numpy as np

from spikediff.errors import SpikediffError

FORMAT = "spikediff-nir/2"
PARTS = ("encoder", "decoder", "denoiser")
CONVENTIONS = {"integration": "forward_euler", "threshold_test": "greater", "reset": "hard",
               "state_init": "zero", "edge_delay_steps": 0}
# op -> required fields (besides "op"); each record may also carry "when"
HOST_OPS = {
    "input_current": ("scale", "offset"),              # x = scale * image + offset
    "one_hot": ("classes",),                          # ids -> one-hot channels
    "one_hot_tokens_and_step": ("token_classes", "step_classes"),
    "readout": ("sources", "decays", "gains"),        # sum_k gain_k sum_t decay_k^(T-1-t) x_t
    "nearest_code": ("metric", "codebook"),           # argmin_k |z - codebook[k]|
    "pixel_shuffle": ("factor",),
    "tanh": (),
    "affine": ("scale", "offset"),
    "sample_tokens": ("mask_id", "diffusion_steps", "reveal"),
}


class NirFormatError(SpikediffError):
    pass


def strs(value) -> list[str]:
    """A list of strings as nir.read returns it (bytes in an object array) or as written."""
    if isinstance(value, (str, bytes)):
        value = [value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).reshape(-1)]


def host(records: list[dict]) -> dict:
    """Typed host records as NIR metadata can store them (no lists of dicts: keyed by index)."""
    for r in records:
        missing = [f for f in HOST_OPS[r["op"]] if f not in r]
        assert not missing, (r["op"], missing)
    return {str(i): dict(r) for i, r in enumerate(records)}


def host_records(md: dict) -> list[dict]:
    """The host records of a part's metadata, in order, strings decoded."""
    h = md.get("host") or {}
    out = []
    for k in sorted(h, key=int):
        r = {key: (v.decode() if isinstance(v, bytes) else v) for key, v in h[k].items()}
        r["op"] = str(r["op"])
        if "sources" in r:
            r["sources"] = strs(r["sources"])
        out.append(r)
    return out


def find(md: dict, op: str) -> dict | None:
    return next((r for r in host_records(md) if r["op"] == op), None)


def _fail(where: str, msg: str):
    raise NirFormatError(f"{where}: {msg}")


def check_part(g: nir.NIRGraph, where: str) -> None:
    md = g.metadata or {}
    part = str(md.get("part", ""))
    if part not in PARTS:
        _fail(where, f"metadata 'part' is {part!r}, not one of {', '.join(PARTS)}")
    for key, want in CONVENTIONS.items():
        got = md.get(key)
        got = got.decode() if isinstance(got, bytes) else got
        if got is None:
            _fail(where, f"metadata has no '{key}' (expected {want!r})")
        if (str(got) if isinstance(want, str) else int(got)) != want:
            _fail(where, f"metadata '{key}' is {got!r}; this reader implements {want!r} only")
    try:
        dt, T = float(md["dt"]), int(md["T"])
    except (KeyError, TypeError, ValueError):
        _fail(where, "metadata needs 'dt' (seconds per step) and 'T' (steps per call)")
    if not (np.isfinite(dt) and dt > 0) or T < 1:
        _fail(where, f"metadata dt = {dt} and T = {T}: dt must be > 0 and T >= 1")
    inp = md.get("input") or {}
    name = str(inp.get("node", ""))
    node = g.nodes.get(name)
    if not isinstance(node, nir.Input):
        _fail(where, f"metadata input.node {name!r} is not an Input node of the graph")
    shape = [int(v) for v in np.asarray(node.input_type["input"]).reshape(-1)]
    said = [int(v) for v in np.asarray(inp.get("shape", [])).reshape(-1)]
    if shape != said:
        _fail(where, f"metadata input.shape {said} disagrees with the Input node's {shape}")
    ro = md.get("readout") or {}
    for n in strs(ro.get("nodes", [])) or [""]:
        if not isinstance(g.nodes.get(n), nir.Output):
            _fail(where, f"metadata readout.nodes names {n!r}, which is not an Output node")
    form = str(md.get("form", ""))
    neurons = {type(v).__name__ for v in g.nodes.values() if isinstance(v, (nir.LI, nir.I))}
    if form == "spiking" and neurons:
        _fail(where, f"form 'spiking' but the graph has {', '.join(sorted(neurons))} readouts")
    if form not in ("full", "spiking"):
        _fail(where, f"metadata form {form!r} is not 'full' or 'spiking'")
    for r in host_records(md):
        if r["op"] not in HOST_OPS:
            _fail(where, f"unknown host op {r['op']!r}")
        missing = [f for f in HOST_OPS[r["op"]] if f not in r]
        if missing:
            _fail(where, f"host op {r['op']!r} lacks {', '.join(missing)}")
        for s in r.get("sources", []):
            if not isinstance(g.nodes.get(s), nir.Output):
                _fail(where, f"host readout reads {s!r}, which is not an Output node")
    channels = shape[0]
    if part == "decoder":
        oh = find(md, "one_hot")
        if oh is None or int(oh["classes"]) != channels:
            _fail(where, f"the Input has {channels} channels; the host one_hot record must "
                         "give as many classes")
    if part == "denoiser" and str(inp.get("encoding")) == "spikes":
        oh = find(md, "one_hot_tokens_and_step")
        if oh is None or int(oh["token_classes"]) + int(oh["step_classes"]) != channels:
            _fail(where, f"the Input has {channels} channels; token_classes + step_classes "
                         "must add up to it")
    if part == "encoder":
        nc = find(md, "nearest_code")
        if nc is None or np.asarray(nc["codebook"]).ndim != 2:
            _fail(where, "the host nearest_code record needs a codebook [K, D]")


def check(g: nir.NIRGraph, where: str = "the file") -> list[str]:
    """Checks a whole export (top level 'model' with part subgraphs) or a one-part
    file; returns the parts it holds."""
    md = g.metadata or {}
    fmt = md.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt is None:
        _fail(where, "no 'format' in its metadata: not a spikediff NIR export (write one with "
                     "spikediff-export --to nir)")
    if str(fmt) != FORMAT:
        _fail(where, f"format {fmt!r}: this spikediff reads {FORMAT!r}; export the checkpoint "
                     "again with this version")
    if str(md.get("part")) == "model":
        parts = [p for p in PARTS if isinstance(g.nodes.get(p), nir.NIRGraph)]
        if not parts:
            _fail(where, "a 'model' graph without encoder, decoder or denoiser subgraphs")
        for p in parts:
            check_part(g.nodes[p], f"{where} ({p})")
        return parts
    check_part(g, where)
    return [str(md["part"])]
