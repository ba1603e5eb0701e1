"""Lava back end: tiny NIR graphs run through the worker vs a numpy reference.

The reference implements the project's discrete NIR semantics (what the Norse
model computes).  Weights are multiples of 2**-5 and time constants 2 or 4
steps, so every float sum is exact in any order and floating_pt Lava must
match spike for spike after the per-layer lag.
"""

import sys
import time

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from hardware.lava.client import (  # noqa: E402
    HOWTO, LavaUnavailableError, LavaWorker, LavaWorkerError, _group_alive, find_lava_python)

DT = 1e-3

try:
    LAVA_PY = find_lava_python()
except LavaUnavailableError as e:
    LAVA_PY = None
    _why = str(e).splitlines()[0]

needs_lava = pytest.mark.needs_lava  # skipped without the Lava env: tests/conftest.py


# ---------------------------------------------------------------- reference

def _conv(x, w, b, stride, pad):
    """x [B,C,H,W], w [O,C,kh,kw] (cross-correlation, like torch)."""
    B, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    out = np.zeros((B, O, Ho, Wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def reference(graph, inputs, dt=DT):
    """Simulate a flat NIR graph per the project's discrete semantics.
    inputs: {name: [T, B, *shape]} -> {node: [T, B, *shape]} (spikes or v)."""
    nodes, edges = graph.nodes, graph.edges
    preds = {n: [s for s, d in edges if d == n] for n in nodes}
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for p in preds[n]:
            visit(p)
        order.append(n)
    for n in nodes:
        visit(n)
    T, B = next(iter(inputs.values())).shape[:2]
    state, rec = {}, {n: [] for n in nodes}
    for t in range(T):
        out = {}
        for n in order:
            node = nodes[n]
            k = type(node).__name__
            if k == "Input":
                out[n] = inputs[n][t]
                continue
            ins = [out[p] for p in preds[n]]
            I = sum(ins[1:], ins[0]) if ins else 0.0
            if k == "Conv2d":
                y = _conv(I.reshape(B, -1, *I.shape[-2:]), node.weight, node.bias,
                          node.stride[0], node.padding[0])
            elif k == "Affine":
                y = I.reshape(B, -1) @ node.weight.T + node.bias
            elif k == "Linear":
                y = I.reshape(B, -1) @ node.weight.T
            elif k == "Flatten":
                y = I.reshape(B, -1)
            elif k == "Scale":
                y = I * node.scale
            elif k == "Output":
                y = I
            else:
                v = state.get(n, np.zeros_like(I, dtype=float))
                if k == "LIF":
                    v = v + dt / node.tau * (node.v_leak - v + node.r * I)
                elif k == "IF":
                    v = v + node.r * I
                elif k == "LI":
                    v = v + dt / node.tau * (node.v_leak - v + node.r * I)
                elif k == "CubaLIF":
                    i = state.get(n + "/i", np.zeros_like(v))
                    i = i + dt / node.tau_syn * (-i + node.w_in * I)
                    state[n + "/i"] = i
                    v = v + dt / node.tau_mem * (node.v_leak - v + node.r * i)
                if k == "LI":
                    y = v.copy()
                else:
                    s = v > node.v_threshold
                    v = np.where(s, 0.0, v)
                    y = s.astype(float)
                state[n] = v
            out[n] = y
            rec[n].append(np.asarray(y, dtype=float))
    return {n: np.stack(r) for n, r in rec.items() if r}


# ---------------------------------------------------------------- graphs

def q(rng, shape, scale):
    """Random weights on a 2**-5 grid (exact float sums)."""
    return np.round(rng.normal(size=shape) * scale * 32) / 32


def lif(shape, tau=2 * DT, vth=1.0):
    return nir.LIF(tau=np.full(shape, tau), r=np.ones(shape), v_leak=np.zeros(shape),
                   v_threshold=np.full(shape, vth), v_reset=np.zeros(shape))


def conv_graph(rng):
    C, H, W = 2, 6, 6
    w1 = q(rng, (4, C, 3, 3), 0.6)
    conv = nir.Conv2d(input_shape=(H, W), weight=w1, stride=1, padding=1, dilation=1, groups=1,
                      bias=q(rng, (4,), 0.1))
    w2 = q(rng, (5, 4 * 3 * 3), 1.0)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([C, H, W])}),
        "conv": conv,
        "lif1": lif((4, H, W)),
        "pool": nir.Conv2d(input_shape=(H, W), weight=q(rng, (4, 4, 2, 2), 0.5), stride=2,
                           padding=0, dilation=1, groups=1, bias=np.zeros(4)),
        "lif2": lif((4, 3, 3), tau=4 * DT, vth=0.5),
        "flat": nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=0),
        "fc": nir.Affine(weight=w2, bias=q(rng, (5,), 0.1)),
        "lif3": lif((5,), vth=0.5),
        "li": nir.LI(tau=np.full(5, 2 * DT), r=np.ones(5), v_leak=np.zeros(5)),
        "output": nir.Output(output_type={"output": np.array([5])}),
    }
    edges = [("input", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "lif2"),
             ("lif2", "flat"), ("flat", "fc"), ("fc", "lif3"), ("lif3", "li"), ("li", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": 8}), (C, H, W)


def misc_graph(rng):
    """IF, CubaLIF (with a resting potential v_leak != 0, which must enter v, not the
    synaptic current), two edges summing into one node, Linear, Scale, skip connection."""
    n_in, n1, n2 = 6, 8, 5
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Linear(weight=q(rng, (n1, n_in), 0.6)),
        "ifn": nir.IF(r=np.ones(n1), v_threshold=np.ones(n1), v_reset=np.zeros(n1)),
        "fc2": nir.Affine(weight=q(rng, (n2, n1), 0.8), bias=np.zeros(n2)),
        "skip": nir.Linear(weight=q(rng, (n2, n_in), 0.5)),
        "scale": nir.Scale(scale=np.full(n2, 2.0)),
        "cuba": nir.CubaLIF(tau_syn=np.full(n2, 2 * DT), tau_mem=np.full(n2, 2 * DT), r=np.ones(n2),
                            v_leak=np.full(n2, 0.0625), v_threshold=np.full(n2, 0.25),
                            v_reset=np.zeros(n2), w_in=np.ones(n2)),
        "fc3": nir.Affine(weight=q(rng, (3, n2), 0.8), bias=q(rng, (3,), 0.2)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }
    edges = [("input", "fc1"), ("fc1", "ifn"), ("ifn", "fc2"), ("fc2", "scale"), ("input", "skip"),
             ("skip", "scale"), ("scale", "cuba"), ("cuba", "fc3"), ("fc3", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": 10}), (n_in,)


def write(tmp_path, graph, name="g.nir", sub=None):
    path = str(tmp_path / name)
    if sub:
        graph = nir.NIRGraph(nodes={sub: graph}, edges=[], metadata=dict(graph.metadata))
    nir.write(path, graph)
    return path


@pytest.fixture(scope="module")
def worker():
    if LAVA_PY is None:
        pytest.skip("Lava env not found")
    with LavaWorker(timeout=120) as w:
        yield w


# ---------------------------------------------------------------- tests

@needs_lava
def test_conv_affine_lif_li_floating_exact(worker, tmp_path):
    rng = np.random.default_rng(0)
    g, shp = conv_graph(rng)
    path = write(tmp_path, g, sub="enc")      # nested subgraph selected by name
    T, B = 8, 3
    x = np.round(rng.uniform(-1, 2, size=(T, B, *shp)) * 16) / 16
    ref = reference(g, {"input": x})
    res = worker.run(path, "enc", {"input": x}, record=["lif1", "lif2", "lif3", "li", "output"])
    assert res.lags == {"lif1": 1, "lif2": 2, "lif3": 3, "li": 4, "output": 4}
    assert res["lif1"].shape == (T + 4, B, 4, 6, 6)
    for n in ("lif1", "lif2", "lif3"):
        assert ref[n].sum() > 0, n
        np.testing.assert_array_equal(res.aligned(n), ref[n], err_msg=n)
    np.testing.assert_allclose(res.aligned("li"), ref["li"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.aligned("output"), ref["li"], rtol=0, atol=1e-12)
    # reuse of the process graph with new inputs: state is reset between calls
    x2 = np.round(rng.uniform(-1, 2, size=(T, B, *shp)) * 16) / 16
    res2 = worker.run(path, "enc", {"input": x2}, record=["lif1", "lif2", "lif3", "li", "output"])
    assert res2.timing["built"] is False
    ref2 = reference(g, {"input": x2})
    for n in ("lif1", "lif2", "lif3"):
        np.testing.assert_array_equal(res2.aligned(n), ref2[n], err_msg=n)


@needs_lava
def test_if_cubalif_summing_edges_floating_exact(worker, tmp_path):
    rng = np.random.default_rng(1)
    g, shp = misc_graph(rng)
    path = write(tmp_path, g)
    T, B = 10, 4
    x = np.round(rng.uniform(-1, 2, size=(T, B, *shp)) * 16) / 16
    ref = reference(g, {"input": x})
    res = worker.run(path, None, {"input": x}, record=["ifn", "cuba", "output"])
    # cuba is fed by ifn (lag 1 -> 2) and directly by the input (skip, relayed to lag 2)
    assert res.lags == {"ifn": 1, "cuba": 2, "output": 3}
    for n in ("ifn", "cuba"):
        assert ref[n].sum() > 0, n
        np.testing.assert_array_equal(res.aligned(n), ref[n], err_msg=n)
    np.testing.assert_allclose(res.aligned("output"), ref["output"], atol=1e-12)


@needs_lava
def test_fixed_pt_agreement(worker, tmp_path):
    rng = np.random.default_rng(2)
    n_in, n1, n2 = 6, 20, 10
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Affine(weight=rng.uniform(-0.5, 1.0, (n1, n_in)), bias=np.zeros(n1)),
        "lif1": lif((n1,)),
        "fc2": nir.Linear(weight=rng.uniform(-0.3, 0.6, (n2, n1))),
        "lif2": lif((n2,)),
        "output": nir.Output(output_type={"output": np.array([n2])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": 16})
    path = write(tmp_path, g)
    T, B = 16, 4
    x = rng.uniform(0, 1.5, size=(T, B, n_in))
    ref = reference(g, {"input": x})
    res = worker.run(path, None, {"input": x}, mode="fixed_pt", record=["lif1", "lif2"],
                     weights="split")
    for n in ("lif1", "lif2"):
        agree = float((res.aligned(n) == ref[n]).mean())
        assert agree >= 0.9, (n, agree)
        assert ref[n].sum() > 0


def wide_graph(rng, n_in=2000, n1=48, n2=24):
    """Wide sparse-input layer (like the denoiser's one-hot input: the
    all-inputs-active bound on the current is far above what really arrives),
    weights spread over two orders of magnitude, per-neuron biases."""
    w1 = rng.normal(0, 0.6, (n1, n_in)) * rng.choice([1.0, 0.05], (n1, n_in), p=[0.3, 0.7])
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Affine(weight=w1, bias=rng.normal(0.3, 0.15, n1)),
        "lif1": lif((n1,)),
        "fc2": nir.Affine(weight=rng.normal(0, 0.5, (n2, n1)), bias=rng.normal(0.25, 0.1, n2)),
        "lif2": lif((n2,)),
        "output": nir.Output(output_type={"output": np.array([n2])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "T": 16}), n_in


@needs_lava
def test_fixed_pt_scaling_wide_layer(worker, tmp_path):
    """fixed_pt scales from the currents a float run really sees, 15-bit weights
    (two 8-bit Sparse parts) and a 13-bit bias: near-exact on a wide sparse-input
    layer where the worst-case scaling made the threshold 64 a_in units (S = 64);
    and the worker rescales when currents grow."""
    rng = np.random.default_rng(5)
    g, n_in = wide_graph(rng)
    path = write(tmp_path, g)
    T, B = 16, 4
    sparse_x = (rng.random((T, B, n_in)) < 0.01).astype(float)
    ref = reference(g, {"input": sparse_x})
    res = worker.run(path, None, {"input": sparse_x}, mode="fixed_pt", record=["lif1", "lif2"],
                     weights="split")
    for n in ("lif1", "lif2"):
        differ, spikes = int((res.aligned(n) != ref[n]).sum()), int(ref[n].sum())
        assert spikes > 80, n
        # old scheme: 34 of 384 and 38 of 96 spikes differed (98.9 / 97.5 % agreement)
        assert differ <= 0.02 * spikes, (n, differ, spikes)
    # denser input, same input range: larger currents than the scales were
    # chosen for -> rebuilt with smaller scales, still close
    dense_x = (rng.random((T, B, n_in)) < 0.08).astype(float)
    res2 = worker.run(path, None, {"input": dense_x}, mode="fixed_pt", record=["lif1", "lif2"],
                     weights="split")
    assert res2.timing["built"] is True
    ref2 = reference(g, {"input": dense_x})
    assert float((res2.aligned("lif1") == ref2["lif1"]).mean()) >= 0.99
    # back to sparse input: fits the (smaller) scales, the net is reused
    res3 = worker.run(path, None, {"input": sparse_x}, mode="fixed_pt", record=["lif1", "lif2"],
                     weights="split")
    assert res3.timing["built"] is False
    assert float((res3.aligned("lif1") == ref["lif1"]).mean()) >= 0.99


def test_plan_and_quantise_without_lava(tmp_path, monkeypatch):
    """The worker's planner and fixed-point quantiser need no Lava: a NIR file ->
    layer plan (lags, composed links, dt from the graph) -> integer parameters
    within export.fixed_point's bit widths."""
    from export import fixed_point as fp
    for name in [m for m in sys.modules if m.startswith("hardware.lava.worker")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lava", None)   # any `import lava...` fails
    from hardware.lava.worker.plan import MappingError, load_graph, plan_graph
    from hardware.lava.worker.quantise import fixed_params, float_currents

    rng = np.random.default_rng(0)
    g, shp = conv_graph(rng)
    graph, dt, T = load_graph(write(tmp_path, g))
    assert (dt, T) == (DT, 8)
    plan = plan_graph(graph, dt)
    assert {n: p.lag for n, p in plan.pops.items()} == {
        "input": 0, "lif1": 1, "lif2": 2, "lif3": 3, "li": 4}
    assert plan.alias == {"output": "li"} and plan.max_lag == 4
    # flat -> fc composes into one link; LIF gain r dt/tau = 0.5 for tau = 2 dt
    assert [(lk.source, lk.target) for lk in plan.links] == [
        ("input", "lif1"), ("lif1", "lif2"), ("lif2", "lif3"), ("lif3", "li")]
    assert plan.pops["lif1"].dv == 0.5 and plan.pops["lif2"].dv == 0.25

    x = rng.uniform(0, 1, (T, 3, *shp))
    observed = float_currents(plan, {"input": x})
    assert set(observed) == {"lif1", "lif2", "lif3", "li"}
    scales, qlinks, qbias, _ = fixed_params(plan, {"input": 1.0}, observed, "split")
    for name, S in scales.items():
        assert S == fp.pow2_floor(S), name
    for parts in qlinks:
        assert 1 <= len(parts) <= 2
        for M, _e in parts:
            assert np.abs(M.data).max() <= fp.WEIGHT_MAX
    for mant, ex in qbias.values():
        assert np.abs(mant).max() <= fp.BIAS_MANT_MAX and 0 <= ex <= fp.BIAS_EXP_MAX

    g.metadata.pop("dt")
    graph, dt, _ = load_graph(write(tmp_path, g, "nodt.nir"))
    with pytest.raises(MappingError, match="no 'dt'"):
        plan_graph(graph, dt)


@needs_lava
def test_unsupported_node_named(worker, tmp_path):
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                   padding=np.array([0, 0])),
             "output": nir.Output(output_type={"output": np.array([1, 2, 2])})}
    path = write(tmp_path, nir.NIRGraph(nodes=nodes, edges=[("input", "pool"), ("pool", "output")],
                                        type_check=False))
    with pytest.raises(LavaWorkerError, match=r"'pool'.*SumPool2d"):
        worker.run(path, None, {"input": np.zeros((2, 1, 1, 4, 4))})


@needs_lava
def test_bad_nir_file(worker, tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(LavaWorkerError, match="cannot read NIR file"):
        worker.run(str(bad), None, {"input": np.zeros((2, 1, 3))})
    with pytest.raises(LavaWorkerError, match="not found"):
        worker.run(str(tmp_path / "missing.nir"), None, {"input": np.zeros((2, 1, 3))})
    assert worker.request("ping")["ok"]   # the worker survives request errors


def test_missing_env_message(tmp_path):
    with pytest.raises(LavaUnavailableError) as ei:
        LavaWorker(python=str(tmp_path / "nope" / "python"))
    msg = str(ei.value)
    assert "bash scripts/setup.sh" in msg and "pip install -r requirements/lava.txt" in msg
    assert "python3.10 -m venv" in msg and HOWTO in msg


def test_missing_env_from_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("SPIKEDIFF_LAVA_PY", raising=False)
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path))
    (tmp_path / "envs" / "lava-abc" / "bin").mkdir(parents=True)   # incomplete build
    with pytest.raises(LavaUnavailableError, match="scripts/setup.sh"):
        find_lava_python()


@needs_lava
def test_worker_crash_and_no_orphans():
    w = LavaWorker(timeout=60).start()
    pgid = w.pgid
    with pytest.raises(LavaWorkerError, match=r"died.*exit code 3[\s\S]*exiting on request"):
        w.request("exit", code=3)
    assert w.proc is None
    assert not _group_alive(pgid)


@needs_lava
def test_worker_timeout_and_no_orphans(tmp_path):
    rng = np.random.default_rng(0)
    g, shp = conv_graph(rng)
    path = write(tmp_path, g)
    w = LavaWorker(timeout=60).start()
    pgid = w.pgid
    try:
        with pytest.raises(LavaWorkerError, match="timed out"):
            w.run(path, None, {"input": np.ones((200, 2, *shp))}, timeout=0.5)
    finally:
        w.close()
    t0 = time.time()
    assert not _group_alive(pgid)
    assert time.time() - t0 < 5


def test_worker_start_crash_is_clean(tmp_path):
    """A python that is not a Lava env dies at import: LavaWorkerError with its stderr."""
    with pytest.raises(LavaWorkerError, match="died during start"):
        with LavaWorker(python=sys.executable, start_timeout=60) as w:
            w.request("ping")
