"""NIR graph -> layer plan (stdlib, numpy, scipy and nir only: no Lava).

:func:`load_graph` reads a NIR file (and its ``dt``), :func:`plan_graph`
checks the graph and reduces it to *populations* (neuron nodes, Input nodes,
synapse-fed Output nodes) and *links*.  Chains of linear nodes (Conv2d,
Affine, Linear, Flatten, Scale) and summing edges are composed into ONE sparse
matrix per (source, target) pair, in numpy C-order of the node shapes (C, H,
W), so each link is one Lava ``Sparse`` process = one time step of delay.  A
node's *lag* is its depth in links; a target fed by sources of different depth
gets identity ``Sparse`` relays on the shorter paths so every input arrives
with the same lag.  ``network.LavaNet`` builds the processes of a plan.

Mapping of the discrete NIR semantics (one step of dt) onto Lava's LIF
``u <- u(1-du) + a_in``, ``v <- v(1-dv) + u + bias``, spike ``v > vth``,
``v <- 0``:

==========  =====  ==========  ================================  ==============
NIR node    du     dv          incoming weight scale g           bias
==========  =====  ==========  ================================  ==============
LIF         1      dt/tau      r dt/tau                          v_leak dt/tau
IF          1      0           r                                 0
LI          1      dt/tau      r dt/tau   (vth = +huge, read v)  v_leak dt/tau
I           1      0           r dt       (vth = +huge, read v)  0
CubaLIF     dt/ts  dt/tm       r dt/tm * w_in * dt/ts            v_leak dt/tm
==========  =====  ==========  ================================  ==============

A synapse bias b (Affine / Conv2d) becomes ``g * b`` added to the target's bias
(not allowed into CubaLIF, where it would have to enter the current). The bias
is the LIF's own ``bias_mant``, added to v at every Lava step: what it does
before a neuron's (lagged) inputs arrive is wiped by the LIFReset there.

dt is the graph's: the ``"dt"`` entry of its metadata (a subgraph's own entry
wins); a graph without one is refused rather than given a guessed step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

import nir

NEURON_KINDS = ("LIF", "IF", "LI", "I", "CubaLIF")
LINEAR_KINDS = ("Conv2d", "Affine", "Linear", "Flatten", "Scale")
FLOAT_NEVER_SPIKE = 1e30  # LI readouts: threshold never reached


class MappingError(ValueError):
    """The NIR graph cannot be mapped to Lava (message names the node)."""


# --------------------------------------------------------------------------
# loading

def load_graph(path: str, subgraph: str | None = None):
    """Read a NIR file, select a subgraph by name. Returns (graph, dt, T) with
    dt and T from its metadata (None where missing)."""
    try:
        g = nir.read(path)
    except FileNotFoundError:
        raise MappingError(f"NIR file not found: {path}") from None
    except Exception as e:  # h5py / nir parse errors
        raise MappingError(f"cannot read NIR file {path!r}: {type(e).__name__}: {e}") from None
    if not isinstance(g, nir.NIRGraph):
        raise MappingError(f"{path!r} does not hold a NIR graph (got {type(g).__name__})")
    meta = dict(g.metadata or {})
    if subgraph:
        sub = g.nodes.get(subgraph)
        if not isinstance(sub, nir.NIRGraph):
            names = [k for k, v in g.nodes.items() if isinstance(v, nir.NIRGraph)]
            raise MappingError(
                f"subgraph {subgraph!r} not found in {path!r}; nested graphs: {names}")
        meta.update(sub.metadata or {})
        g = sub
    T, dt = meta.get("T"), meta.get("dt")
    return (g, float(np.asarray(dt)) if dt is not None else None,
            int(np.asarray(T)) if T is not None else None)


# --------------------------------------------------------------------------
# planning (pure numpy)

def _uniform(node_name, kind, pname, value, shape=None) -> float:
    a = np.asarray(value, dtype=np.float64)
    if a.size == 0:
        raise MappingError(f"node {node_name!r} ({kind}): parameter {pname} is empty")
    if not np.all(a == a.flat[0]):
        raise MappingError(
            f"node {node_name!r} ({kind}): parameter {pname} varies across neurons "
            f"(min {a.min():g}, max {a.max():g}); Lava's LIF needs one value per population")
    return float(a.flat[0])


def _per_neuron(value, n) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    if a.size == 1:
        return np.full(n, float(a[0]))
    if a.size != n:
        raise MappingError(f"parameter of size {a.size} does not match {n} neurons")
    return a


def _shape_of(t):
    if t is None:
        return None
    a = np.asarray(t).reshape(-1)
    if a.size == 0:
        return None
    return tuple(int(x) for x in a)


def _conv_matrix(name, node: "nir.Conv2d", in_shape):
    w = np.asarray(node.weight, dtype=np.float64)
    if w.ndim != 4:
        raise MappingError(f"node {name!r} (Conv2d): weight must be 4-d [Cout,Cin,kH,kW], got {w.shape}")
    cout, cin_g, kh, kw = w.shape
    groups = int(node.groups or 1)
    if in_shape is None or len(in_shape) != 3:
        ishape = _shape_of(node.input_shape)
        if ishape is None:
            raise MappingError(f"node {name!r} (Conv2d): unknown input shape")
        in_shape = (cin_g * groups, *ishape[-2:])
    C, H, W = in_shape
    if C != cin_g * groups:
        raise MappingError(f"node {name!r} (Conv2d): {C} input channels, weight expects {cin_g * groups}")
    sh, sw = (node.stride, node.stride) if np.isscalar(node.stride) else tuple(node.stride)
    dh, dw = (node.dilation, node.dilation) if np.isscalar(node.dilation) else tuple(node.dilation)
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            ph = pw = 0
        else:  # same (stride 1)
            ph, pw = (dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2
    elif np.isscalar(pad):
        ph = pw = int(pad)
    else:
        ph, pw = (int(x) for x in pad)
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1:
        raise MappingError(f"node {name!r} (Conv2d): empty output for input {in_shape}")
    cout_g = cout // groups
    co, ci, ky, kx, oy, ox = np.meshgrid(np.arange(cout), np.arange(cin_g), np.arange(kh),
                                         np.arange(kw), np.arange(Ho), np.arange(Wo),
                                         indexing="ij")
    iy = oy * sh - ph + ky * dh
    ix = ox * sw - pw + kx * dw
    ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    g = co // cout_g
    cin = g * cin_g + ci
    vals = w[co, ci, ky, kx]
    ok &= vals != 0
    rows = (co * Ho + oy) * Wo + ox
    cols = (cin * H + iy) * W + ix
    M = sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(cout * Ho * Wo, C * H * W))
    M.sum_duplicates()
    bias = node.bias if getattr(node, "bias", None) is not None else 0.0
    b = np.repeat(np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (cout,)), Ho * Wo)
    return M, b, (cout, Ho, Wo)


def _linear_op(name, node, in_shape):
    """Return (matrix, bias, out_shape) of a linear node given its input shape."""
    kind = type(node).__name__
    n_in = int(np.prod(in_shape)) if in_shape else None
    if kind == "Conv2d":
        return _conv_matrix(name, node, in_shape)
    if kind in ("Affine", "Linear"):
        w = np.asarray(node.weight, dtype=np.float64)
        if w.ndim != 2:
            raise MappingError(f"node {name!r} ({kind}): weight must be 2-d, got {w.shape}")
        if n_in is not None and w.shape[1] != n_in:
            raise MappingError(
                f"node {name!r} ({kind}): weight takes {w.shape[1]} inputs, input has shape {in_shape}")
        b = np.zeros(w.shape[0])
        if kind == "Affine" and node.bias is not None:
            b = np.broadcast_to(np.asarray(node.bias, dtype=np.float64).reshape(-1), (w.shape[0],)).copy()
        out = _shape_of(getattr(node, "output_type", {}).get("output")) or (w.shape[0],)
        if int(np.prod(out)) != w.shape[0]:
            out = (w.shape[0],)
        return sp.csr_matrix(w), b, out
    if kind == "Flatten":
        if n_in is None:
            raise MappingError(f"node {name!r} (Flatten): unknown input shape")
        return sp.identity(n_in, format="csr"), np.zeros(n_in), (n_in,)
    if kind == "Scale":
        if n_in is None:
            raise MappingError(f"node {name!r} (Scale): unknown input shape")
        s = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), in_shape).reshape(-1)
        return sp.diags(s, format="csr"), np.zeros(n_in), tuple(in_shape)
    raise MappingError(f"node {name!r}: {kind} is not a linear node")


@dataclass
class Population:
    name: str
    kind: str                 # Input | LIF | IF | LI | CubaLIF | Output
    shape: tuple
    lag: int = 0
    du: float = 1.0
    dv: float = 0.0
    vth: float = FLOAT_NEVER_SPIKE
    gain: np.ndarray | None = None   # per neuron scale g of incoming weights
    bias: np.ndarray | None = None   # per neuron bias added to v each step

    @property
    def size(self):
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def spiking(self):
        return self.kind in ("LIF", "IF", "CubaLIF")


@dataclass
class Link:
    source: str
    target: str
    matrix: sp.csr_matrix     # (n_target, n_source), already scaled by target gain
    relays: int = 0           # identity delay stages before the matrix
    # the link as ONE 2-d convolution, where it is one (a Conv2d node straight
    # from a population, one gain per output channel): (weight [O, C, kh, kw]
    # times the gain, stride, padding, source shape (C, H, W)), so a runner may
    # convolve instead of multiplying by the composed matrix (hardware/emulator.py)
    conv: tuple | None = None


@dataclass
class Plan:
    pops: dict = field(default_factory=dict)     # name -> Population (topological order)
    links: list = field(default_factory=list)
    alias: dict = field(default_factory=dict)    # Output name fed directly by a population
    dt: float = 1e-3
    T: int | None = None

    @property
    def max_lag(self):
        return max([p.lag for p in self.pops.values()] + [0])

    def lag_of(self, name):
        name = self.alias.get(name, name)
        return self.pops[name].lag


def _toposort(nodes, preds, name_of_graph="graph"):
    order, state = [], {}

    def visit(n, stack):
        s = state.get(n)
        if s == 1:
            raise MappingError(f"recurrent edge through node {n!r}: recurrence is not supported")
        if s == 2:
            return
        state[n] = 1
        for p in preds[n]:
            visit(p, stack)
        state[n] = 2
        order.append(n)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        for n in nodes:
            visit(n, [])
    finally:
        sys.setrecursionlimit(old)
    return order


def plan_graph(graph: "nir.NIRGraph", dt: float | None) -> Plan:
    """The layer plan of a flat NIR graph with time step dt, the graph's own
    (``load_graph``); None (no "dt" in its metadata) is refused."""
    nodes = graph.nodes
    for name, node in nodes.items():
        kind = type(node).__name__
        if kind not in NEURON_KINDS + LINEAR_KINDS + ("Input", "Output"):
            hint = " (nested graph: select it by name)" if kind == "NIRGraph" else ""
            raise MappingError(
                f"node {name!r}: NIR node kind {kind} is not supported by the Lava mapper{hint}; "
                f"supported: Input, Output, {', '.join(NEURON_KINDS + LINEAR_KINDS)}")
    if dt is None:
        raise MappingError("the graph has no 'dt' in its metadata (seconds per time step); "
                           "the mapping takes its time step from the graph")
    preds = {n: [] for n in nodes}
    succs = {n: [] for n in nodes}
    for e in graph.edges:
        s, d = e[0], e[1]
        s, d = s.split(".")[0] if s not in nodes else s, d.split(".")[0] if d not in nodes else d
        if s not in nodes or d not in nodes:
            raise MappingError(f"edge {e} refers to an unknown node")
        preds[d].append(s)
        succs[s].append(d)
    order = _toposort(list(nodes), preds)

    plan = Plan(dt=dt)
    convs = {}    # Conv2d node fed by one population -> (population, node, its shape)
    shapes = {}   # output shape of every node
    expr = {}     # linear node -> (dict source -> matrix, bias)

    def input_expr(name):
        """Sum of the expressions of a node's predecessors."""
        terms, bias, shape = {}, None, None
        for p in preds[name]:
            if p in plan.pops:
                n = plan.pops[p].size
                t, b = {p: sp.identity(n, format="csr")}, np.zeros(n)
            else:
                t, b = expr[p]
            if shape is not None and int(np.prod(shapes[p])) != int(np.prod(shape)):
                raise MappingError(
                    f"node {name!r}: summed inputs have different sizes {shape} and {shapes[p]}")
            shape = shape if shape is not None else shapes[p]
            for s_, m in t.items():
                terms[s_] = terms[s_] + m if s_ in terms else m
            bias = b if bias is None else bias + b
        return terms, bias, shape

    for name in order:
        node = nodes[name]
        kind = type(node).__name__
        if kind == "Input":
            shp = _shape_of(node.input_type.get("input")) or _shape_of(node.output_type.get("output"))
            if shp is None:
                raise MappingError(f"input node {name!r} has no shape")
            if preds[name]:
                raise MappingError(f"input node {name!r} has incoming edges")
            plan.pops[name] = Population(name, "Input", shp, lag=0)
            shapes[name] = shp
            continue
        terms, bias, in_shape = input_expr(name)
        if kind in LINEAR_KINDS:
            if not preds[name]:
                raise MappingError(f"node {name!r} ({kind}) has no input")
            M, b, out_shape = _linear_op(name, node, in_shape)
            if M.shape[1] != int(np.prod(in_shape)):
                raise MappingError(
                    f"node {name!r} ({kind}) takes {M.shape[1]} inputs, receives shape {in_shape}")
            expr[name] = ({s_: (M @ m).tocsr() for s_, m in terms.items()}, M @ bias + b)
            shapes[name] = tuple(out_shape)
            if kind == "Conv2d" and len(preds[name]) == 1 and preds[name][0] in plan.pops:
                convs[name] = (preds[name][0], node, tuple(in_shape))
            continue
        if kind == "Output":
            if not terms:
                raise MappingError(f"output node {name!r} has no input")
            if len(terms) == 1 and not np.any(bias):
                (s_, m), = terms.items()
                n = m.shape[0]
                if m.shape == (n, n) and (m != sp.identity(n)).nnz == 0:
                    plan.alias[name] = s_
                    shapes[name] = shapes[s_]
                    continue
        for s_ in terms:
            if plan.pops[s_].kind in ("LI", "I", "Output"):
                raise MappingError(
                    f"node {name!r} is driven by {plan.pops[s_].kind} node {s_!r}: LI is only supported as a read-out "
                    f"(its output is a voltage, Lava neurons send spikes)")
        if kind == "Output":
            n = int(np.prod(in_shape))
            # read-out of the synaptic current: a memoryless neuron (du = dv = 1,
            # never spikes) whose v is W s + b at every step
            pop = Population(name, "Output", tuple(in_shape), du=1.0, dv=1.0, gain=np.ones(n),
                             bias=np.asarray(bias, dtype=np.float64).copy())
        else:
            shp = tuple(in_shape) if in_shape is not None else None
            pshape = np.shape(getattr(node, "v_threshold", getattr(node, "tau", 0.0)))
            if shp is None:
                shp = tuple(pshape) if pshape else None
            if shp is None:
                raise MappingError(f"node {name!r} ({kind}) has no input and no shape")
            n = int(np.prod(shp))
            pop = _neuron_population(name, kind, node, shp, n, dt)
            syn_bias = bias if bias is not None else np.zeros(n)
            if np.any(syn_bias):  # noqa: E501
                if kind == "CubaLIF":
                    raise MappingError(
                        f"node {name!r} (CubaLIF): a synapse bias into CubaLIF cannot be mapped "
                        f"exactly (it would enter the synaptic current)")
                pop.bias = pop.bias + pop.gain * syn_bias
        lag = 0
        for s_ in terms:
            lag = max(lag, plan.pops[s_].lag + 1)
        pop.lag = lag if terms else 1
        plan.pops[name] = pop
        shapes[name] = pop.shape
        for s_, m in terms.items():
            m = sp.diags(pop.gain) @ m
            m = m.tocsr()
            m.eliminate_zeros()
            plan.links.append(Link(s_, name, m, relays=pop.lag - plan.pops[s_].lag - 1,
                                   conv=_conv_of(preds[name], convs, expr, s_, pop)))
    plan.shapes = shapes
    return plan


def _conv_of(preds, convs, expr, source, pop):
    """Link.conv of the link source -> pop where all of it is one Conv2d node
    straight from `source` (other inputs of pop may come from other sources)."""
    via = [p for p in preds if (source in expr[p][0] if p in expr else p == source)]
    if len(via) != 1 or via[0] not in convs or convs[via[0]][0] != source:
        return None
    _, node, in_shape = convs[via[0]]
    w = np.asarray(node.weight, dtype=np.float64)
    if len(in_shape) != 3 or int(node.groups or 1) != 1 or np.any(np.asarray(node.dilation) != 1):
        return None
    gain = pop.gain.reshape(w.shape[0], -1)
    if not np.all(gain == gain[:, :1]):
        return None
    pad = node.padding
    if isinstance(pad, str):
        return None
    pad = (int(pad), int(pad)) if np.isscalar(pad) else tuple(int(p) for p in pad)
    stride = node.stride
    stride = (int(stride), int(stride)) if np.isscalar(stride) else tuple(int(s) for s in stride)
    return (w * gain[:, :1, None, None], stride, pad, in_shape)


def _neuron_population(name, kind, node, shp, n, dt):
    def u(p):
        return _uniform(name, kind, p, getattr(node, p))

    v_reset = getattr(node, "v_reset", None)
    if v_reset is not None and np.any(np.asarray(v_reset) != 0):
        raise MappingError(f"node {name!r} ({kind}): v_reset != 0 is not supported (Lava resets v to 0)")
    r = _per_neuron(node.r, n)
    if kind == "LIF":
        a = dt / u("tau")
        return Population(name, kind, shp, du=1.0, dv=a, vth=u("v_threshold"), gain=r * a,
                          bias=_per_neuron(node.v_leak, n) * a)
    if kind == "IF":
        return Population(name, kind, shp, du=1.0, dv=0.0, vth=u("v_threshold"), gain=r.copy(),
                          bias=np.zeros(n))
    if kind == "LI":
        a = dt / u("tau")
        return Population(name, kind, shp, du=1.0, dv=a, vth=FLOAT_NEVER_SPIKE, gain=r * a,
                          bias=_per_neuron(node.v_leak, n) * a)
    if kind == "I":  # integrator read-out: v <- v + dt r I, never spikes
        return Population(name, kind, shp, du=1.0, dv=0.0, vth=FLOAT_NEVER_SPIKE, gain=r * dt,
                          bias=np.zeros(n))
    if kind == "CubaLIF":
        a_s, a_m = dt / u("tau_syn"), dt / u("tau_mem")
        w_in = _per_neuron(node.w_in, n)
        return Population(name, kind, shp, du=a_s, dv=a_m, vth=u("v_threshold"),
                          gain=r * a_m * w_in * a_s, bias=_per_neuron(node.v_leak, n) * a_m)
    raise MappingError(f"node {name!r}: unsupported neuron kind {kind}")
