"""NIR -> torch: run exported subgraphs with the project's discrete per-step semantics.

A small explicit executor rather than nirtorch's `nir_to_torch`: in nirtorch 2.6
an Output node with several incoming edges is not summed (the encoder's
feature is two readouts summing into its Output), a graph's intermediate
spike trains cannot be observed (we compare every layer), and its default
Affine mapping leaves the torch bias uninitialised (`module.weight.bias = ...`).

Semantics: the neuron nodes (LIF, LI, I, IF) step with spikediff.neuron's state
updates at the graph's metadata `dt`, their parameters read by
export.nir_graph.step_parameters; Conv2d, Affine, Linear, Scale, Flatten are
applied at each step; edges into a node sum. The graph must be feed-forward
(no recurrent edges). All state starts at zero (v = 0), as the model's neurons do.

Host steps (between subgraphs) are the model's own functions (spikediff.vqsvae,
spikediff.denoiser), called from `Exported.encode`, `decode`, `denoise`, `generate`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F

from spikediff import neuron
from spikediff.denoiser import one_hot_input, raw_input
from spikediff.errors import SpikediffError
from spikediff.vqsvae import image_current, nearest_code, tanh_readout, to_unit

from . import nir_schema
from .nir_graph import NEURON_NODES, refinement_of, step_parameters


class ExecError(SpikediffError):
    pass


def _t(a, dtype):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _pair(v) -> tuple[int, int]:
    a = np.broadcast_to(np.atleast_1d(np.asarray(v)), (2,))
    return int(a[0]), int(a[1])


def topological_order(graph: nir.NIRGraph) -> list[str]:
    """Node names of a feed-forward graph, each after all its predecessors."""
    preds = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    order, done, visiting = [], set(), set()

    def visit(n):
        if n in done:
            return
        if n in visiting:
            raise ExecError(f"node '{n}' is on a cycle: recurrent NIR graphs are not supported "
                            "by this executor")
        visiting.add(n)
        for p in preds[n]:
            visit(p)
        visiting.discard(n)
        done.add(n)
        order.append(n)

    for n in graph.nodes:
        visit(n)
    return order


class _Step:
    """A node applied to a whole sequence [T, B, ...]."""

    def __init__(self, node, dt: float, dtype):
        self.node, self.dt, self.dtype = node, dt, dtype
        n = node
        if isinstance(n, nir.Conv2d):
            self.w, self.b = _t(n.weight, dtype), _t(n.bias, dtype)
            pad = n.padding if isinstance(n.padding, str) else _pair(n.padding)
            self.kw = dict(stride=_pair(n.stride), padding=pad, dilation=_pair(n.dilation),
                           groups=int(n.groups))
        elif isinstance(n, (nir.Affine, nir.Linear)):
            self.w = _t(n.weight, dtype)
            self.b = _t(n.bias, dtype) if isinstance(n, nir.Affine) else None
        elif isinstance(n, nir.Scale):
            self.s = _t(n.scale, dtype)
        elif isinstance(n, NEURON_NODES):
            self.p = step_parameters(n, dt, dtype)
            # spiking kinds output spikes, read-outs (LI, I) their v
            self.spiking = isinstance(n, (nir.LIF, nir.IF))
            self.step = {nir.LIF: neuron.lif_step, nir.IF: neuron.if_step,
                         nir.LI: neuron.li_step, nir.I: neuron.i_step}[type(n)]
        elif isinstance(n, (nir.Flatten, nir.Input, nir.Output)):
            pass
        else:
            raise ExecError(f"NIR node type {type(n).__name__} is not supported by this executor")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, T = self.node, x.shape[0]
        if isinstance(n, nir.Conv2d):
            y = F.conv2d(x.reshape(-1, *x.shape[2:]), self.w, self.b, **self.kw)
            return y.reshape(T, -1, *y.shape[1:])
        if isinstance(n, (nir.Affine, nir.Linear)):
            return F.linear(x, self.w, self.b)
        if isinstance(n, nir.Scale):
            return x * self.s
        if isinstance(n, nir.Flatten):
            # NIR dims exclude batch (and we add time): shift by 2
            end = n.end_dim if n.end_dim < 0 else n.end_dim + 2
            return x.flatten(n.start_dim + 2, end)
        if isinstance(n, (nir.Input, nir.Output)):
            return x
        v = torch.zeros_like(x[0])  # a neuron node, from rest
        out = []
        for xt in x:
            if self.spiking:
                z, v = self.step(xt, v, self.p)
                out.append(z)
            else:
                v = self.step(xt, v, self.p)
                out.append(v)
        return torch.stack(out)


class GraphRunner:
    """Runs one (flat) NIRGraph on inputs [T, B, ...]; returns every node's output sequence."""

    def __init__(self, graph: nir.NIRGraph, dt: float | None = None,
                 dtype: torch.dtype = torch.float64):
        if dt is None:
            if "dt" not in graph.metadata:
                raise ExecError("the graph has no 'dt' in its metadata; pass dt explicitly")
            dt = float(graph.metadata["dt"])
        self.graph, self.dt, self.dtype = graph, dt, dtype
        for name, node in graph.nodes.items():
            if isinstance(node, nir.NIRGraph):
                raise ExecError(f"'{name}' is a nested graph: run subgraphs one at a time")
        self.order = topological_order(graph)
        self.preds = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
        self.steps = {n: _Step(graph.nodes[n], dt, dtype) for n in self.order}
        self.inputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Input)]
        self.outputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Output)]

    def run(self, x: torch.Tensor | dict) -> dict[str, torch.Tensor]:
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                raise ExecError(f"graph has inputs {self.inputs}: pass a dict")
            x = {self.inputs[0]: x}
        vals: dict[str, torch.Tensor] = {}
        for n in self.order:
            if n in self.inputs:
                vals[n] = x[n].to(self.dtype)
                continue
            ins = [vals[p] for p in self.preds[n]]
            if not ins:
                raise ExecError(f"node '{n}' has no input")
            s = ins[0]
            for other in ins[1:]:
                s = s + other
            vals[n] = self.steps[n](s)
        return vals

    def __call__(self, x) -> torch.Tensor:
        vals = self.run(x)
        return vals[self.outputs[0]]


def repeat(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.unsqueeze(0).expand(T, *x.shape)


# -- host steps ----------------------------------------------------------------
@dataclass
class Exported:
    """The parts of an exported file (all three, or one with `--part`) with the host
    steps between them, as its metadata records them (export/nir_schema.py)."""
    graph: nir.NIRGraph
    dtype: torch.dtype = torch.float64
    where: str = "the file"

    def __post_init__(self):
        self.parts = nir_schema.check(self.graph, self.where)
        g = self.graph
        whole = str(g.metadata.get("part")) == "model"
        self.subs = {p: g.nodes[p] for p in self.parts} if whole else {self.parts[0]: g}
        self.md = g.metadata
        self.runners = {p: GraphRunner(sub, dtype=self.dtype) for p, sub in self.subs.items()}
        if "encoder" in self.subs:
            emd = self.subs["encoder"].metadata
            self.T_vq = int(emd["T"])
            self.codebook = _t(nir_schema.find(emd, "nearest_code")["codebook"], self.dtype)
        if "decoder" in self.subs:
            dmd = self.subs["decoder"].metadata
            self.T_vq = int(dmd["T"])
            self.K = int(nir_schema.find(dmd, "one_hot")["classes"])
            self.P = int(nir_schema.find(dmd, "pixel_shuffle")["factor"])
        if "denoiser" in self.subs:
            nmd = self.subs["denoiser"].metadata
            self.K, self.mask_id = int(nmd["codebook_size"]), int(nmd["mask_id"])
            self.steps, self.token_input = int(nmd["diffusion_steps"]), str(nmd["token_input"])
            self.T_den = int(nmd["T"])
        if "grid" in self.md:
            self.grid = tuple(int(v) for v in np.asarray(self.md["grid"]).reshape(-1))

    @classmethod
    def read(cls, path: str | Path, dtype=torch.float64) -> "Exported":
        path = Path(path)
        if not path.is_file():
            raise ExecError(f"no NIR file at {path}")
        try:
            g = nir.read(str(path))
        except Exception as e:  # nir.read raises whatever h5py or its type check raises
            raise ExecError(f"{path} is not a readable NIR file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
        return cls(g, dtype, str(path))

    def _need(self, part: str) -> None:
        if part not in self.subs:
            raise ExecError(f"{self.where} holds only the {', '.join(self.parts)} part(s); "
                            f"the {part} is needed here: export without --part")

    def _run(self, part: str, x: torch.Tensor) -> dict:
        self._need(part)
        return self.runners[part].run(x)

    def read_out(self, part: str, vals: dict) -> torch.Tensor:
        """The part's readout value (after the last step), full or spiking form."""
        md = self.subs[part].metadata
        rec = nir_schema.find(md, "readout")
        if rec is None:  # full form: the Output at the last step
            return vals[nir_schema.strs(md["readout"]["nodes"])[0]][-1]
        x = sum(vals[s] for s in rec["sources"])
        T = x.shape[0]
        steps = torch.arange(T - 1, -1, -1, dtype=self.dtype)  # T-1-t
        w = sum(float(g) * float(d) ** steps
                for d, g in zip(np.asarray(rec["decays"]).reshape(-1),
                                np.asarray(rec["gains"]).reshape(-1)))
        v = torch.zeros_like(x[0])
        for t in range(T):  # in step order, as the LI/I nodes accumulate
            v = v + w[t] * x[t]
        return v

    # encoder
    def encoder_run(self, images01: torch.Tensor) -> dict:
        return self._run("encoder", repeat(image_current(images01.to(self.dtype)), self.T_vq))

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.read_out("encoder", self.encoder_run(images01))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        self._need("encoder")
        return nearest_code(z, self.codebook)

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        return self.nearest(self.features(images01))

    # decoder
    def decoder_input(self, codes: torch.Tensor) -> torch.Tensor:
        self._need("decoder")
        oh = F.one_hot(codes, self.K).permute(0, 3, 1, 2).to(self.dtype)
        return repeat(oh, self.T_vq)

    def decoder_run(self, codes: torch.Tensor) -> dict:
        return self._run("decoder", self.decoder_input(codes))

    def image_from_phases(self, phases: torch.Tensor) -> torch.Tensor:
        """The decoder's readout value -> image in [0, 1]."""
        return to_unit(tanh_readout(F.pixel_shuffle(phases, self.P)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.image_from_phases(self.read_out("decoder", self.decoder_run(codes)))

    # denoiser
    def denoiser_input(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._need("denoiser")
        if self.token_input == "raw":
            x = raw_input(tokens, t, self.dtype)
        else:
            x = one_hot_input(tokens, t, self.K, self.steps, self.dtype)
        return repeat(x, self.T_den)

    def denoiser_run(self, tokens, t) -> dict:
        return self._run("denoiser", self.denoiser_input(tokens, t))

    def denoise(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.read_out("denoiser", self.denoiser_run(tokens, t))

    @torch.no_grad()
    def generate(self, n: int, *, temperature: float | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None):
        """Images [n, C, H, W] in [0, 1] and token grids, entirely through the graph."""
        from spikediff.diffusion import sample_tokens
        self._need("denoiser")
        self._need("decoder")
        temp = float(self.md["temperature"]) if temperature is None else temperature
        tokens = sample_tokens(self.denoise, n, self.grid, self.mask_id, self.steps, steps,
                               temp, generator, refine=refinement_of(self.md))
        return self.decode(tokens), tokens


def host_steps(graph: nir.NIRGraph, part: str | None = None) -> list[dict]:
    """The typed host records of a part (or of a one-part file's top level)."""
    return nir_schema.host_records(graph.nodes[part].metadata if part else graph.metadata)


# -- verification against the Norse model ------------------------------------------
def double_precision(model):
    """An eval-mode float64 copy of the model (its input currents follow the weights' dtype)."""
    import copy
    m = copy.deepcopy(model)
    m.vq.double().eval()
    m.denoiser.double().eval()
    return m




@torch.no_grad()
def verify(model, exported: "Exported", *, n: int = 4, seed: int = 0,
           generate: int = 2) -> list[dict]:
    """Per-layer agreement of the graph with the Norse model on random inputs.

    Both run in the exported graph's dtype (float64 by default: BN folding and the
    polyphase kernels change float rounding, so exact spike equality is only
    meaningful at a precision where those differences are ~1e-16).
    Returns rows {part, node, kind, n, mismatches, max_abs}.
    """
    m = double_precision(model) if exported.dtype == torch.float64 else model
    g = torch.Generator().manual_seed(seed)
    C, S = model.channels, model.image_size
    rows = []

    def spikes(part, node, ref, got):
        ref, got = ref.to(torch.float64), got.to(torch.float64)
        rows.append({"part": part, "node": node, "kind": "spikes", "n": ref.numel(),
                     "mismatches": int((ref != got).sum()), "max_abs": float((ref - got).abs().max()),
                     "spike_rate": float(ref.mean())})

    def values(part, node, ref, got, kind="values"):
        ref, got = ref.to(torch.float64), got.to(torch.float64)
        rows.append({"part": part, "node": node, "kind": kind, "n": ref.numel(),
                     "mismatches": int((ref != got).sum()) if kind == "codes" else 0,
                     "max_abs": float((ref - got).abs().max())})

    if "encoder" in exported.subs:
        images = torch.rand(n, C, S, S, generator=g, dtype=torch.float64).to(exported.dtype)
        ref = m.vq.encode_spikes(images)
        got = exported.encoder_run(images)
        for i, r in enumerate(ref):
            spikes("encoder", f"encoder.{i}.lif", r, got[f"encoder.{i}.lif"])
        feature = exported.read_out("encoder", got)
        values("encoder", "feature (readout)", m.vq.features(ref[-1]), feature)
        codes_ref = m.vq.codebook.nearest(m.vq.features(ref[-1]))
        values("encoder", "nearest code (host)", codes_ref, exported.nearest(feature), "codes")
    K = model.vq.cfg.codebook_size
    if "decoder" in exported.subs:
        codes = torch.randint(0, K, (n, *model.grid), generator=g)
        asg = m.vq.generate_spikes(m.vq.codebook.lookup(codes))
        dec = m.vq.decode_spikes(asg)
        got = exported.decoder_run(codes)
        spikes("decoder", "spike_generator.lif", asg, got["spike_generator.lif"])
        p = 1
        for i, r in enumerate(dec):
            p *= 2
            spikes("decoder", f"decoder.{i}.lif", F.pixel_unshuffle(r.flatten(0, 1), p).view(
                r.shape[0], r.shape[1], -1, *model.grid), got[f"decoder.{i}.lif"])
        values("decoder", "image", m.vq.decode(codes),
               exported.image_from_phases(exported.read_out("decoder", got)))
    if "denoiser" in exported.subs:
        den = m.denoiser
        tokens = torch.randint(0, K + 1, (n, *model.grid), generator=g)
        t = torch.randint(1, den.diffusion_steps + 1, (n,), generator=g)
        ref = den.spikes(tokens, t)
        got = exported.denoiser_run(tokens, t)
        for i, r in enumerate(ref):
            spikes("denoiser", f"layers.{i}.lif", r, got[f"layers.{i}.lif"])
        values("denoiser", "logits", den.readout(ref), exported.read_out("denoiser", got))
    # generation through the graph vs the model, same seed
    if generate and {"denoiser", "decoder"} <= set(exported.subs):
        a, ta = m.generate(generate, generator=torch.Generator().manual_seed(seed))
        b, tb = exported.generate(generate, generator=torch.Generator().manual_seed(seed))
        values("generate", "tokens", ta, tb, "codes")
        values("generate", "images", a, b)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'part':9s} {'node':26s} {'kind':7s} {'compared':>9s} {'agree':>9s} {'max |diff|':>11s}"]
    for r in rows:
        if r["kind"] in ("spikes", "codes"):
            agree = f"{100 * (1 - r['mismatches'] / r['n']):.4f}%"
        else:
            agree = "-"
        lines.append(f"{r['part']:9s} {r['node']:26s} {r['kind']:7s} {r['n']:9d} {agree:>9s} "
                     f"{r['max_abs']:11.2e}")
    return "\n".join(lines)


# -- views for other NIR consumers ----------------------------------------------------
def spiking_view(sub: nir.NIRGraph, last: str | None = None, dt: float | None = None) -> nir.NIRGraph:
    """A copy of a subgraph cut after node `last` (default: the last LIF), readouts removed.

    With `dt`, every time constant is rescaled by dt / graph dt (and I/IF gains by the
    inverse), which is the same discrete system for an importer that assumes its own dt
    (snnTorch 1.0's import_from_nir assumes dt = 1e-4 whatever the metadata says).
    """
    import copy
    order = topological_order(sub)
    if last is None:
        last = [n for n in order if isinstance(sub.nodes[n], nir.LIF)][-1]
    keep = set()

    def up(n):
        if n in keep:
            return
        keep.add(n)
        for a, b in sub.edges:
            if b == n:
                up(a)
    up(last)
    nodes = {n: copy.deepcopy(sub.nodes[n]) for n in order if n in keep}
    edges = [(a, b) for a, b in sub.edges if a in keep and b in keep]
    out_shape = nodes[last].output_type["output"]
    nodes["output"] = nir.Output(output_type=np.array(out_shape))
    edges.append((last, "output"))
    md = dict(sub.metadata)
    if dt is not None:
        k = dt / float(sub.metadata["dt"])
        for node in nodes.values():
            if isinstance(node, (nir.LIF, nir.LI)):
                node.tau = np.asarray(node.tau) * k
            elif isinstance(node, (nir.I, nir.IF)):
                node.r = np.asarray(node.r) / k
        md["dt"] = float(dt)
    md["view"] = f"spikes of '{last}' (readouts removed)"
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md)
