"""sinabs 3.1 (SynSense; the front end of Speck): the graph as `sinabs.from_nir` reads it.

What sinabs 3.1.3 `from_nir` does with a NIR file (it pins nir <= 1.0.4; loading goes
through nirtorch 2.0.2, the newest nirtorch that allows nir 1.0.4):

- nir 1.0.4's `LIF` has no `v_reset` field: `nir.read` raises TypeError on a file that
  has one (every LIF nir 1.0.8 writes has one). `write` leaves it out where it is 0,
  nir 1.0.8's default.
- Neuron parameters must be 1-d or broadcast-shaped: its checks `any(node.v_leak)` (LIF)
  and `any(node.r != 1)` (LI) raise "truth value of an array ... is ambiguous" on
  per-neuron [C, H, W] arrays, and a 0-d array has no `.unsqueeze`.
- `tau` is read in time steps (metadata ignored): a LIF updates `v <- exp(-1/tau) v + I`
  (norm_input=False) and ignores `r`; an LI does the same and must have r = 1.
- A LIF spikes `floor(v / v_threshold)` times where v >= v_threshold (MultiSpike) and
  subtracts v_threshold per spike (MembraneSubtract); from_nir cannot be told otherwise.
- `I` (and any node it has no module for) is dropped without an error, and nirtorch
  2.0.2 runs nodes depth-first, so a node with two incoming edges sums only the inputs
  that ran before it.

This profile writes the same network so that both readings agree: ours (forward Euler at
the metadata's dt, see export/nir_graph.py) and sinabs'. All LIFs of a part must share
one per-step leak l = dt/tau (ours: 1/2). Then, with tau' = -1/ln(1 - l) and dt' = l*tau'
(1/ln 2 and 1/(2 ln 2) for l = 1/2):

- every LIF: tau = tau', r = 1/l, v_leak 0, and the synapse before it scaled by l*r
  (x 1/2, exact in floating point; where spikes or a shared node feed it, an inserted
  diagonal 1x1 Conv2d "NAME.gain" carries the factor). Ours: v <- v + l ((1/l) l r I - v),
  the same update as before, bit for bit for l = 1/2; sinabs: v <- (1 - l) v + l r I;
- LI and I readouts are rewritten for dt' only (exact for us). sinabs cannot read them:
  it refuses an LI whose r is not 1 and drops an I. Give sinabs the spiking-only form
  (export.nir_exec.spiking_view), with the readouts on the host;
- parameters (uniform in our graphs; a non-uniform one is refused) have shape (1,);
- metadata: dt = dt', target = "sinabs".

(1,)-shaped parameters fail nir 1.0.8's type check, and `nir.read(path,
type_check=False)` still checks nested graphs: the file is for sinabs, not for current
NIR readers. What sinabs computes differently (its reset rule and spike count) is
measured (benchmarks/nir_consumers.py, docs/nir.md).
"""
from __future__ import annotations

import copy
import math

import nir
import numpy as np

from spikediff.errors import SpikediffError

NAME = "sinabs"
DESCRIPTION = ("sinabs 3.1 from_nir (nir 1.0.4): dt and tau such that its steps read the "
               "LIFs right, LIF gains in the synapses, no v_reset, (1,)-shaped parameters")
DIFFERENCES = (
    "sinabs' LIF emits floor(v / v_threshold) spikes in a step where v >= v_threshold and "
    "resets by subtracting v_threshold; from_nir cannot be told otherwise. On the "
    "spiking-only parts of the shipped export (4 random inputs each) its LIF layers "
    "agree 62.9-95.0 % with ours as loaded (up to 21 spikes per neuron and step), "
    "88.9-99.0 % with one spike per step, and 100 % on every layer of every part once "
    "SingleSpike and MembraneReset are set after loading. It cannot read the LI/I "
    "readouts (an LI's r must be 1; an I is dropped silently): give it the spiking-only "
    "form (benchmarks/nir_consumers.py, docs/nir.md)."
)
TARGET_NOTE = ("sinabs 3.1 from_nir reads tau in steps (v <- exp(-1/tau) v + I, a LIF's r "
               "ignored): at this dt the LIFs mean the same per step under the forward "
               "Euler rule above and under sinabs'; sinabs cannot read LI/I readouts")

# what its import can take (export/targets/__init__.py)
READS_READOUTS = False
READS_NESTED = False

_SYNAPSES = (nir.Conv2d, nir.Affine, nir.Linear)
_NEURONS = (nir.LIF, nir.LI, nir.I, nir.IF, nir.CubaLIF, nir.CubaLI)


class SinabsProfileError(SpikediffError):
    pass


class LIF(nir.LIF):
    """A nir 1.0.8 LIF written without `v_reset`, the form nir 1.0.4 reads.

    Only for v_reset = 0, nir 1.0.8's default when the field is absent, so a current
    reader gets the same node back."""

    def to_dict(self):
        d = super().to_dict()
        d.pop("v_reset", None)
        return d


def drop_default_v_reset(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same graph with every LIF whose v_reset is 0 written without the field.

    nir 1.0.4 then reads the file (nothing else in our exports stops it) and nir 1.0.8
    reads v_reset = 0 back. Beware that nir 1.0.4 documents its LIF (which has no
    v_reset) as resetting by subtraction, so the two readers' specifications still
    disagree on what such a file means."""
    nodes = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            node = drop_default_v_reset(node)
        elif type(node) is nir.LIF and not np.any(np.asarray(node.v_reset)):
            node = LIF(tau=node.tau, r=node.r, v_leak=node.v_leak,
                       v_threshold=node.v_threshold, metadata=node.metadata)
        nodes[name] = node
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=dict(graph.metadata),
                        type_check=False)


def _scalar(node, field: str, where: str) -> float:
    a = np.asarray(getattr(node, field), dtype=np.float64)
    if a.size == 0 or not np.all(a == a.flat[0]):
        raise SinabsProfileError(f"node '{where}': {field} differs between neurons; "
                                 "sinabs.from_nir reads only (1,)-shaped parameters")
    return float(a.flat[0])


def _one(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float64)


def _tau_steps(leak: float, where: str) -> float:
    """sinabs' tau (in steps) for the per-step decay 1 - leak: exp(-1/tau) = 1 - leak."""
    if not 0.0 < leak < 1.0:
        raise SinabsProfileError(f"node '{where}': per-step leak dt/tau = {leak} is not in "
                                 "(0, 1); sinabs' exp(-1/tau) cannot express it")
    return -1.0 / math.log1p(-leak)


def _lif_leak(sub: nir.NIRGraph, dt: float) -> float | None:
    """The one per-step leak dt/tau of the part's LIFs (None: no LIF)."""
    leaks = {n: dt / _scalar(node, "tau", n) for n, node in sub.nodes.items()
             if isinstance(node, nir.LIF)}
    if len(set(leaks.values())) > 1:
        raise SinabsProfileError(f"LIFs {', '.join(sorted(leaks))} have different time "
                                 "constants: sinabs' tau in steps and our dt cannot both "
                                 "hold for all of them")
    return next(iter(leaks.values()), None)


def _neuron(node, name: str, dt: float, dt_new: float, lif_leak: float | None):
    """(node rewritten for step dt_new, gain to move into the synapse before it)."""
    if isinstance(node, nir.LIF):
        r = _scalar(node, "r", name)
        if _scalar(node, "v_leak", name) != 0.0:
            raise SinabsProfileError(f"node '{name}': sinabs.from_nir requires v_leak = 0")
        if _scalar(node, "v_reset", name) != 0.0:
            raise SinabsProfileError(f"node '{name}': v_reset must be 0: nir 1.0.4 (sinabs) "
                                     "has no v_reset field")
        return nir.LIF(tau=_one(dt_new / lif_leak), r=_one(1.0 / lif_leak), v_leak=_one(0.0),
                       v_threshold=_one(_scalar(node, "v_threshold", name)),
                       v_reset=_one(0.0)), lif_leak * r
    if isinstance(node, nir.LI):
        if _scalar(node, "v_leak", name) != 0.0:
            raise SinabsProfileError(f"node '{name}': sinabs.from_nir requires v_leak = 0")
        leak = dt / _scalar(node, "tau", name)
        return nir.LI(tau=_one(dt_new / leak), r=_one(_scalar(node, "r", name)),
                      v_leak=_one(0.0)), 1.0
    if isinstance(node, nir.I):
        return nir.I(r=_one(dt * _scalar(node, "r", name) / dt_new)), 1.0
    raise SinabsProfileError(f"node '{name}': {type(node).__name__} has no sinabs form here")


def _scaled(node, k: float):
    """A copy of synapse `node` whose output is k times the original's."""
    node = copy.deepcopy(node)
    node.weight = np.asarray(node.weight) * k
    if not isinstance(node, nir.Linear):
        node.bias = np.asarray(node.bias) * k
    return node


def _gain_conv(shape, k: float) -> nir.Conv2d:
    """1x1 Conv2d multiplying each channel of a [C, H, W] map by k."""
    c = int(shape[0])
    w = np.zeros((c, c, 1, 1))
    w[np.arange(c), np.arange(c), 0, 0] = k
    return nir.Conv2d(input_shape=tuple(int(v) for v in shape[1:]), weight=w, stride=1,
                      padding=0, dilation=1, groups=1, bias=np.zeros(c))


def adapt_part(sub: nir.NIRGraph) -> nir.NIRGraph:
    """One flat subgraph in sinabs' form (see the module docstring)."""
    if "dt" not in sub.metadata:
        raise SinabsProfileError("the graph has no 'dt' in its metadata")
    dt = float(sub.metadata["dt"])
    lif_leak = _lif_leak(sub, dt)
    dt_new = dt if lif_leak is None else lif_leak * _tau_steps(lif_leak, "LIF")
    nodes = copy.deepcopy(dict(sub.nodes))
    edges = list(sub.edges)
    for name, node in sub.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise SinabsProfileError(f"'{name}' is a nested graph inside a part")
        if not isinstance(node, _NEURONS):
            continue  # synapses, Input, Output, Flatten: as they are
        new, k = _neuron(node, name, dt, dt_new, lif_leak)
        nodes[name] = new
        if k == 1.0:
            continue
        preds = [a for a, b in edges if b == name]
        for pre in preds:
            if isinstance(nodes[pre], _SYNAPSES) and [b for a, b in edges if a == pre] == [name]:
                nodes[pre] = _scaled(nodes[pre], k)
                continue
            shape = node.input_type["input"]
            if len(shape) != 3:
                raise SinabsProfileError(f"node '{name}': no synapse to carry its input gain "
                                         "and its input is not a [C, H, W] map")
            gain = f"{name}.gain" if len(preds) == 1 else f"{name}.gain.{pre}"
            nodes[gain] = _gain_conv(shape, k)
            edges[edges.index((pre, name))] = (pre, gain)
            edges.append((gain, name))
    md = dict(sub.metadata)
    md.update(dt=dt_new, target=NAME, target_note=TARGET_NOTE)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md, type_check=False)


def adapt(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The whole file (subgraphs adapted one by one) or one flat part."""
    parts = {n: g for n, g in graph.nodes.items() if isinstance(g, nir.NIRGraph)}
    if not parts:
        return adapt_part(graph)
    nodes = {n: (adapt_part(g) if n in parts else copy.deepcopy(g))
             for n, g in graph.nodes.items()}
    md = dict(graph.metadata)
    md["target"] = NAME
    dts = {float(nodes[n].metadata["dt"]) for n in parts}
    if "dt" in md and len(dts) == 1:  # the top level's dt describes its parts
        md["dt"] = dts.pop()
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=md, type_check=False)


def write(graph: nir.NIRGraph, path) -> None:
    """Write `graph` (from adapt) as nir 1.0.4 reads it: LIFs without v_reset (all 0)."""
    nir.write(str(path), drop_default_v_reset(graph))
