"""The spyx profile (export/targets/spyx.py) and, where the spyx env is found, its runner.

adapt() must keep the network (checked by running both graphs with our executor);
the runner (benchmarks/nir_consumers/spyx.py) runs under spyx's own Python: found as
this interpreter when it has spyx, else $SPIKEDIFF_SPYX_PY
(SPIKEDIFF_CONSUMERS=spyx source scripts/setup.sh), else those tests are skipped.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from export.nir_exec import GraphRunner, spiking_view, topological_order
from export.nir_graph import build_graph, lif_node
from export.targets import profile
from spikediff.model import active_random_model
from spikediff.neuron import DT

spyx_target = profile("spyx")
RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "nir_consumers" / "spyx.py"


def _conv(cout, cin, k, stride=1, pad=1, seed=0, shape=(6, 6), scale=1.5):
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(cout, cin, k, k)) * scale / np.sqrt(cin * k * k))
    w = w.astype(np.float32)
    b = (rng.normal(size=cout) * 0.3).astype(np.float32)
    return nir.Conv2d(input_shape=shape, weight=w, bias=b, stride=stride, padding=pad,
                      dilation=1, groups=1)


def small_graph(v_leak=0.0, r=1.0):
    """input [2,6,6] -> conv -> LIF -> conv -> LIF -> output, LIF 'a' also -> 'probe'."""
    a, b = lif_node((4, 6, 6)), lif_node((3, 6, 6))
    a.v_leak = np.full((4, 6, 6), v_leak)
    a.r = np.full((4, 6, 6), r)
    nodes = {"input": nir.Input(np.array([2, 6, 6])),
             "c1": _conv(4, 2, 3, seed=1, scale=6.0), "a": a,
             "c2": _conv(3, 4, 3, seed=2, scale=6.0), "b": b,
             "output": nir.Output(np.array([3, 6, 6])), "probe": nir.Output(np.array([4, 6, 6]))}
    edges = [("input", "c1"), ("c1", "a"), ("a", "c2"), ("c2", "b"), ("b", "output"),
             ("a", "probe")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": 4})


def small_input(T=4, B=3, seed=0):
    x = np.random.default_rng(seed).uniform(-0.5, 1.5, size=(1, B, 2, 6, 6)).astype(np.float32)
    return np.repeat(x, T, axis=0)


def _spikes(graph, x):
    vals = GraphRunner(graph).run(torch.as_tensor(x))
    return {n: vals[n].numpy() for n in graph.nodes if isinstance(graph.nodes[n], nir.LIF)}


def _gain(node, dt):
    return np.asarray(node.r) * dt / np.asarray(node.tau)


# -- adapt: the same network, said the way spyx reads it ----------------------------

@pytest.mark.parametrize("v_leak,r", [(0.0, 1.0), (0.25, 1.5)])
def test_adapt_keeps_the_network(v_leak, r, tmp_path):
    g = small_graph(v_leak, r)
    before = {k: np.array(v.weight, copy=True) for k, v in g.nodes.items()
              if isinstance(v, nir.Conv2d)}
    ga = spyx_target.adapt(g)
    # the input graph is not touched
    for k, w in before.items():
        assert np.array_equal(g.nodes[k].weight, w)
    assert float(ga.metadata["dt"]) == DT
    for n in ("a", "b"):  # spyx's assumptions now hold: input gain 1, no v_leak
        assert np.allclose(_gain(ga.nodes[n], DT), 1.0)
        assert np.all(np.asarray(ga.nodes[n].v_leak) == 0)
    # through the file and back: the same spikes under the file's own semantics
    nir.write(str(tmp_path / "a.nir"), ga)
    ga = nir.read(str(tmp_path / "a.nir"))
    x = small_input()
    ref, got = _spikes(g, x), _spikes(ga, x)
    for n in ref:
        assert 0.05 < ref[n].mean() < 0.8, (n, ref[n].mean())  # non-trivial
        assert np.array_equal(ref[n], got[n]), n


def test_adapt_leaves_a_shared_synapse():
    g = small_graph()
    g.nodes["a2"] = lif_node((4, 6, 6))
    g.nodes["probe2"] = nir.Output(np.array([4, 6, 6]))
    g.edges += [("c1", "a2"), ("a2", "probe2")]  # c1 now feeds two LIFs
    ga = spyx_target.adapt(g)
    assert np.array_equal(ga.nodes["c1"].weight, g.nodes["c1"].weight)
    assert np.allclose(_gain(ga.nodes["a"], DT), 0.5)
    assert np.allclose(_gain(ga.nodes["b"], DT), 1.0)  # c2 is b's alone


def test_adapt_nested_model_graph():
    g = build_graph(active_random_model("tiny", 0))
    ga = spyx_target.adapt(g)
    parts = [n for n, v in g.nodes.items() if isinstance(v, nir.NIRGraph)]
    assert sorted(parts) == ["decoder", "denoiser", "encoder"]
    rng = np.random.default_rng(0)
    for part in parts:
        sub, suba = g.nodes[part], ga.nodes[part]
        dt = float(sub.metadata["dt"])
        assert float(suba.metadata["dt"]) == dt
        lifs = [n for n, v in suba.nodes.items() if isinstance(v, nir.LIF)]
        assert lifs and all(np.allclose(_gain(suba.nodes[n], dt), 1.0) for n in lifs), part
        view, viewa = spiking_view(sub), spiking_view(suba)
        shape = tuple(int(v) for v in view.nodes["input"].input_type["input"])
        x = rng.uniform(0, 1, size=(int(sub.metadata["T"]), 2) + shape).astype(np.float32)
        ref, got = _spikes(view, x), _spikes(viewa, x)
        for n in ref:
            assert np.array_equal(ref[n], got[n]), (part, n)


# -- the runner, through spyx itself ------------------------------------------------

def _spyx_python() -> str | None:
    if importlib.util.find_spec("spyx") is not None:
        return sys.executable
    p = os.environ.get("SPIKEDIFF_SPYX_PY")
    return p if p and Path(p).exists() else None


def spyx_rule(graph, x):
    """spyx 1.0's LIF as measured: s = H(V - thr) on the previous V, V = beta*V + I - s*thr,
    beta = 1 - dt/tau; the input gain r*dt/tau, v_leak and v_reset are not read."""
    dt = float(graph.metadata["dt"])
    preds = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    vals, conv = {}, GraphRunner(graph)
    out = {}
    for n in topological_order(graph):
        node = graph.nodes[n]
        if isinstance(node, nir.Input):
            vals[n] = torch.as_tensor(x, dtype=torch.float64)
            continue
        s = sum(vals[p] for p in preds[n])
        if isinstance(node, nir.LIF):
            beta = torch.as_tensor(1 - dt / np.asarray(node.tau, dtype=np.float64))
            thr = torch.as_tensor(np.asarray(node.v_threshold, dtype=np.float64))
            v, z = torch.zeros_like(s[0]), []
            for it in s:
                spike = (v > thr).double()
                v = beta * v + it - spike * thr
                z.append(spike)
            vals[n] = out[n] = torch.stack(z)
        else:
            vals[n] = conv.steps[n](s)
    return {n: v.numpy() for n, v in out.items()}


@pytest.fixture(scope="module")
def spyx_py():
    p = _spyx_python()
    if p is None:
        pytest.skip("spyx not importable here and SPIKEDIFF_SPYX_PY not set "
                    "(SPIKEDIFF_CONSUMERS=spyx source scripts/setup.sh builds its env)")
    return p


def test_runner_through_spyx(spyx_py, tmp_path):
    ga = spyx_target.adapt(small_graph())
    nir.write(str(tmp_path / "g.nir"), ga)
    x = small_input()
    np.savez(tmp_path / "in.npz", x=x)
    r = subprocess.run([spyx_py, str(RUNNER), str(tmp_path / "g.nir"), str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    # spyx drops the second Output (fan-out of 'a') and the runner says so
    assert "drops node 'probe'" in r.stderr
    out = np.load(tmp_path / "out.npz")
    assert sorted(out.files) == ["output/output", "spikes/a", "spikes/b"]
    want = spyx_rule(ga, x)
    ours = _spikes(ga, x)
    for n in ("a", "b"):
        assert out[f"spikes/{n}"].shape == (4, 3) + want[n].shape[2:]
        assert np.array_equal(out[f"spikes/{n}"], want[n]), n  # spyx is exactly that rule
    assert np.array_equal(out["output/output"], out["spikes/b"])
    # ... which is one step behind ours on the first layer's first spikes
    assert not out["spikes/a"][0].any()
    assert np.array_equal(out["spikes/a"][1], ours["a"][0])


def test_runner_error_is_one_line(spyx_py, tmp_path):
    np.savez(tmp_path / "in.npz", x=small_input())
    (tmp_path / "bad.nir").write_bytes(b"not a nir file")
    r = subprocess.run([spyx_py, str(RUNNER), str(tmp_path / "bad.nir"), str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("WARNING: Location")]
    assert len(lines) == 1 and lines[0].startswith("error: spyx from_nir:"), r.stderr
