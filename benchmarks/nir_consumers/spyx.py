"""Run a flat NIR graph through spyx 1.x's own NIR import and record every LIF layer.

    python benchmarks/nir_consumers/spyx.py FILE IN.npz OUT.npz

Runs under the spyx environment (requirements/consumer-spyx.txt): numpy, nir, jax,
spyx only; no spikediff, no torch.

FILE: a flat NIR graph of Input, Conv2d, LIF, Output nodes. IN.npz: "x" float32
[T, B, *input_shape] (channels-first, as NIR). OUT.npz: "spikes/<LIF node>" and
"output/<Output node>", float32 [T, B, *shape] (channels-first), as spyx computed them.

How spyx 1.0 imports (spyx/nir.py, from_nir -> _build_model): it builds a
*Sequential* model by walking the edge list from the node named "input", following
the FIRST edge out of each node until it reaches the node named "output" (or a node
with no outgoing edge). Every node off that one chain is dropped without a message
(fan-out branches, extra Outputs). It runs channels-last (NHWC), so the input is
transposed here and the recorded spikes transposed back. LIF: beta = 1 - dt/tau
(dt is from_nir's argument, default 1: we pass the file's metadata dt); r, v_leak and
v_reset are not read. Its LIF step is `s = H(V - thr); V = beta*V + x - s*thr`
(spike from the previous step's V, subtractive reset).

spyx's from_nir does not return which module came from which node, so the runner
works out the chain by spyx's own rule and checks that the module types match it.
Each LIF layer is recorded by stepping the model from_nir returned layer by layer
(each module called with its own state, as spyx.nn.Sequential does); the final
layer's output is checked against from_nir's own output.
"""
from __future__ import annotations

import os
import sys

# This file is named spyx.py: drop its own folder from the import path so that
# `import spyx` finds the package, not this script.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import numpy as np  # noqa: E402


def fail(msg: str) -> None:
    print(f"error: spyx from_nir: {msg}", file=sys.stderr)
    sys.exit(1)


def note(msg: str) -> None:
    print(f"workaround: {msg}", file=sys.stderr)


def spyx_chain(edges) -> list[str]:
    """Node names spyx 1.0's _build_model visits: from 'input', first edge out, until 'output'."""
    chain, cur = [], "input"
    seen = set()
    while cur != "output":
        nxt = next((b for a, b in edges if a == cur), None)
        if nxt is None or cur in seen:
            break
        seen.add(cur)
        chain.append(nxt)
        cur = nxt
    return chain


def _uniform(a, value) -> bool:
    return bool(np.all(np.asarray(a) == value))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: spyx.py FILE IN.npz OUT.npz", file=sys.stderr)
        return 2
    path, in_path, out_path = argv
    try:
        import jax
        import jax.numpy as jnp
        import nir
        import spyx.nir
        import spyx.nn
        from flax import nnx
    except Exception as e:  # noqa: BLE001
        fail(f"cannot import spyx/jax/nir: {e}")
    jax.config.update("jax_platforms", "cpu")

    try:
        graph = nir.read(path)
    except Exception as e:  # noqa: BLE001
        fail(f"nir.read({path}): {e}")
    kinds = (nir.Input, nir.Conv2d, nir.LIF, nir.Output)
    for name, node in graph.nodes.items():
        if not isinstance(node, kinds):
            fail(f"node '{name}' is a {type(node).__name__}; this runner takes Input, Conv2d, LIF, "
                 "Output only (flat graph)")
    if "input" not in graph.nodes:
        fail("spyx builds its model from the node named 'input'; this graph has none "
             f"(inputs: {[n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]})")

    x = np.load(in_path)["x"].astype(np.float32)
    if x.ndim < 3:
        fail(f"x must be [T, B, ...], got shape {x.shape}")
    T, B = x.shape[:2]

    dt = graph.metadata.get("dt") if graph.metadata else None
    if dt is None:
        dt = 1.0
        note("the file has no metadata dt: using spyx's default dt = 1")
    dt = float(np.asarray(dt))

    # What spyx will and will not build (it says nothing itself).
    chain = spyx_chain(graph.edges)
    built = [n for n in chain if not isinstance(graph.nodes[n], (nir.Input, nir.Output))]
    for name, node in graph.nodes.items():
        if name == "input" or name in chain:
            continue
        why = []
        for a, b in graph.edges:
            if b == name and a in chain + ["input"]:
                first = next(bb for aa, bb in graph.edges if aa == a)
                why.append(f"fan-out of '{a}': spyx follows only its first edge (to '{first}')")
        why = "; ".join(why) or "not on spyx's single chain from 'input'"
        key = {nir.Output: "output", nir.LIF: "spikes"}.get(type(node))
        print(f"warning: spyx from_nir drops node '{name}' ({type(node).__name__}): {why}"
              + (f"; no {key}/{name} written" if key else ""), file=sys.stderr)
    for name in built:
        node = graph.nodes[name]
        if isinstance(node, nir.Conv2d):
            if not _uniform(node.dilation, 1) or int(np.asarray(node.groups)) != 1:
                print(f"warning: spyx ignores Conv2d dilation/groups of '{name}' "
                      f"(dilation {np.asarray(node.dilation).tolist()}, groups {node.groups})",
                      file=sys.stderr)
        elif isinstance(node, nir.LIF):
            tau = np.asarray(node.tau, dtype=np.float64)
            gain = np.asarray(node.r, dtype=np.float64) * dt / tau
            ignored = []
            if not np.allclose(gain, 1.0, rtol=1e-6, atol=0):
                ignored.append(f"input gain r*dt/tau = {float(np.mean(gain)):.4g} (spyx adds "
                               "the input with gain 1; export with --target spyx folds it into "
                               "the synapse)")
            if not _uniform(node.v_leak, 0.0):
                ignored.append("v_leak (not 0)")
            if not _uniform(node.v_reset, 0.0):
                ignored.append("v_reset (spyx subtracts v_threshold on a spike)")
            if ignored:
                print(f"warning: spyx ignores LIF '{name}' " + "; ".join(ignored), file=sys.stderr)

    # spyx runs channels-last.
    spatial = x.ndim == 5
    xs = np.moveaxis(x, 2, -1) if spatial else x
    if spatial:
        note("input transposed [T, B, C, H, W] -> [T, B, H, W, C] (spyx/flax convs are "
             "channels-last); recorded spikes transposed back")

    try:
        model, out = spyx.nir.from_nir(graph, jnp.asarray(xs), dt=dt, rngs=nnx.Rngs(0))
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")

    layers = list(model.layers)
    want = [type(graph.nodes[n]).__name__ for n in built]
    got = [type(m).__name__ for m in layers]
    expect = {"Conv2d": "Conv", "LIF": "LIF"}
    if [expect[w] for w in want] != got:
        fail(f"model layers {got} do not match the chain spyx should have built "
             f"{list(zip(built, want))}")

    # Step the returned model layer by layer (spyx.nn.Sequential.__call__ without the
    # fusion) so each LIF layer's spikes can be recorded.
    state = model.initial_state(B)
    rec = {n: [] for n, m in zip(built, layers) if isinstance(m, spyx.nn.LIF)}
    last = []
    for t in range(T):
        h = jnp.asarray(xs[t])
        new_state = []
        for name, layer, s in zip(built, layers, state):
            if s is not None:
                h, s = layer(h, s)
            else:
                h = layer(h)
            new_state.append(s)
            if name in rec:
                rec[name].append(np.asarray(h))
        state = new_state
        last.append(np.asarray(h))
    last = np.stack(last)
    if not np.array_equal(last, np.asarray(out)):
        fail("stepping the imported model layer by layer does not reproduce from_nir's output "
             f"(max diff {float(np.max(np.abs(last - np.asarray(out))))})")

    def back(a):
        a = np.asarray(a, dtype=np.float32)
        return np.moveaxis(a, -1, 2) if a.ndim == 5 else a

    result = {f"spikes/{n}": back(np.stack(v)) for n, v in rec.items()}
    outs = [n for n in chain if isinstance(graph.nodes[n], nir.Output)]
    for n in outs:
        result[f"output/{n}"] = back(last)
    np.savez(out_path, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
