"""Shared recording code for the torch-based NIR consumer runners (snnTorch, Norse, nirtorch).

Imported by path from the runners; it must not import spikediff or export (a consumer
environment may lack them): numpy, nir and torch only.

A runner gives `main` a `build(graph) -> (net, modules, step)` where `modules` maps NIR
node names to the torch modules the consumer's import created and `step(x_t, state) ->
(returned, state)` advances the network by one step. LIF spikes are recorded with forward
hooks on those modules; an Output node's value is the consumer's own value for it (the
Output's module when the consumer calls one, else what `step` returns), and every place
where the runner had to help is printed to stderr as one `workaround:` line.
"""
from __future__ import annotations

import contextlib
import io
import keyword
import sys
import warnings

import nir
import numpy as np
import torch


class RunnerError(Exception):
    pass


def note(msg: str) -> None:
    """One line on stderr per thing the runner had to work around."""
    print(f"workaround: {msg}", file=sys.stderr)


def sanitized(name: str) -> str:
    """The module name nirtorch 2.6 gives a NIR node ('.' -> '_', keywords prefixed)."""
    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name


def modules_by_node(graph: nir.NIRGraph, net: torch.nn.Module) -> dict:
    """NIR node name -> the submodule nirtorch created for it (None where there is none)."""
    subs = dict(net.named_children())
    seen: dict[str, str] = {}
    out = {}
    for name in graph.nodes:
        s = sanitized(name)
        if s in seen:
            raise RunnerError(f"nodes '{seen[s]}' and '{name}' get the same torch name '{s}'")
        seen[s] = name
        out[name] = subs.get(s)
    return out


def check_flat(graph: nir.NIRGraph) -> None:
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise RunnerError(f"'{name}' is a nested graph: pass a flat graph")


class Recorder:
    """Forward hooks: every call's output per node (the first element of a tuple)."""

    def __init__(self, modules: dict):
        self.seq: dict[str, list] = {n: [] for n in modules}
        self.handles = [m.register_forward_hook(self._hook(n))
                        for n, m in modules.items() if m is not None]

    def _hook(self, name):
        def hook(_module, _inputs, output):
            y = output[0] if isinstance(output, (tuple, list)) else output
            self.seq[name].append(y.detach().clone())
        return hook

    def stacked(self, name: str, T: int) -> np.ndarray:
        s = self.seq[name]
        if len(s) != T:
            raise RunnerError(f"module of '{name}' was called {len(s)} times in {T} steps")
        return torch.stack(s).float().numpy()


def fx_step(net, graph: nir.NIRGraph):
    """One step of a nir_to_torch GraphModule built from `graph` (one Output): it returns
    (*the Output's inputs, state)."""
    told = []

    def step(x, state):
        *vals, state = net(x, state)
        if len(vals) > 1:
            if not told:
                note(f"nir_to_torch returns the {len(vals)} inputs of the Output node "
                     "unsummed (a tuple); summed here")
                told.append(1)
            vals = [sum(vals[1:], vals[0])]
        return vals[0], state
    step.returns = next(n for n, v in graph.nodes.items() if isinstance(v, nir.Output))
    return step


def one_output(graph: nir.NIRGraph) -> nir.NIRGraph:
    """nirtorch 2.6's nir_to_torch never returns on a graph with several Output nodes
    (each Output re-queues itself while another is pending): keep the first one."""
    outs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(outs) <= 1:
        return graph
    note(f"nir_to_torch loops forever on {len(outs)} Output nodes: built with only "
         f"'{outs[0]}' (Output nodes {outs[1:]} dropped from the graph given to it)")
    drop = set(outs[1:])
    return nir.NIRGraph(nodes={k: v for k, v in graph.nodes.items() if k not in drop},
                        edges=[e for e in graph.edges if e[1] not in drop],
                        metadata=dict(graph.metadata), type_check=False)


def _quiet():
    """The consumers print and warn freely (snnTorch prints from import_from_nir)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


@torch.no_grad()
def run(graph: nir.NIRGraph, x: np.ndarray, build) -> dict[str, np.ndarray]:
    """Build the consumer's network, step it T times from rest, return the OUT.npz arrays."""
    check_flat(graph)
    lifs = [n for n, v in graph.nodes.items() if isinstance(v, nir.LIF)]
    outs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    with _quiet():
        net, modules, step = build(graph)
    missing = [n for n in lifs if modules.get(n) is None]
    if missing:
        raise RunnerError(f"the import created no module for LIF node(s) {missing}")
    rec = Recorder({n: m for n, m in modules.items() if m is not None})
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    T = xt.shape[0]
    returned, state = [], None
    with _quiet():
        for t in range(T):
            y, state = step(xt[t], state)
            returned.append(y)
    res = {f"spikes/{n}": rec.stacked(n, T) for n in lifs}
    for o in outs:
        if modules.get(o) is not None and len(rec.seq[o]) == T:  # the consumer's Output module
            res[f"output/{o}"] = rec.stacked(o, T)
    ret = getattr(step, "returns", outs[0] if len(outs) == 1 else None)
    if ret in outs and f"output/{ret}" not in res:  # the Output the consumer's call returns
        res[f"output/{ret}"] = torch.stack(returned).float().numpy()
    left = [o for o in outs if f"output/{o}" not in res]
    for o in left:  # not returned as such by the consumer: its own values of the sources
        srcs = [a for a, b in graph.edges if b == o]
        note(f"Output '{o}': the consumer returns no value for it; recorded as the sum of "
             f"the consumer's outputs of {srcs}")
        vals = [torch.as_tensor(rec.stacked(a, T)) for a in srcs]
        res[f"output/{o}"] = torch.stack(vals).sum(0).numpy()
    return res


def main(argv: list[str], consumer: str, build) -> int:
    """`python RUNNER FILE IN.npz OUT.npz`; errors: one line on stderr, exit 1."""
    try:
        if len(argv) != 3:
            raise RunnerError("usage: FILE IN.npz OUT.npz")
        path, inp, out = argv
        graph = nir.read(path)
        with np.load(inp) as z:
            x = z["x"]
        res = run(graph, x, build)
        np.savez(out, **res)
    except Exception as e:  # one line, whatever went wrong
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {consumer}: {type(e).__name__}: {msg}"[:2000], file=sys.stderr)
        return 1
    return 0
