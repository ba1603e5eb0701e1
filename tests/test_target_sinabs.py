"""export/targets/sinabs.py: a file nir 1.0.4 and sinabs.from_nir read, the same network.

sinabs pins nir <= 1.0.4 and lives in its own environment: the run through sinabs
itself (benchmarks/nir_consumers/sinabs.py) happens only where SPIKEDIFF_SINABS_PY is
set. Elsewhere sinabs' documented update rule stands in: v <- exp(-1/tau) v + I per step,
tau read in steps, a LIF's r ignored.
"""
import math
import os
import subprocess
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.nir_exec import Exported, GraphRunner, repeat, spiking_view, topological_order
from export.nir_graph import build_graph, lif_node
from export.targets import profile
from export.targets.sinabs import SinabsProfileError, adapt_part, drop_default_v_reset
from spikediff.model import active_random_model
from spikediff.neuron import DT

sinabs = profile("sinabs")
PARTS = ("encoder", "decoder", "denoiser")
NIR_104_LIF = {"type", "tau", "r", "v_leak", "v_threshold", "metadata"}  # nir 1.0.4's LIF
RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "nir_consumers" / "sinabs.py"


@pytest.fixture(scope="module")
def graphs():
    g = build_graph(active_random_model("tiny", 0))
    return g, sinabs.adapt(g)


@pytest.fixture(scope="module")
def inputs(graphs):
    ex = Exported(graphs[0])
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, ex.K, (3, *ex.grid), generator=gen)
    t = torch.randint(1, ex.steps + 1, (3,), generator=gen)
    return {"encoder": repeat(images - 0.5, ex.T_vq), "decoder": ex.decoder_input(codes),
            "denoiser": ex.denoiser_input(codes, t)}


def run_sinabs_rule(g: nir.NIRGraph, x: torch.Tensor, hard_reset: bool = True) -> dict:
    """Every node's output [T, B, ...] of a spiking graph under sinabs' LIF update.

    hard_reset: one spike per step and v = 0 after it (what the runner's `hard-reset`
    variant sets after loading); else sinabs' defaults: floor(v / v_threshold) spikes and
    v_threshold subtracted per spike. sinabs spikes at v >= v_threshold; r is ignored."""
    preds = {n: [a for a, b in g.edges if b == n] for n in g.nodes}
    vals = {}
    for n in topological_order(g):
        node = g.nodes[n]
        if isinstance(node, nir.Input):
            vals[n] = x
            continue
        s = sum(vals[p] for p in preds[n])
        if isinstance(node, nir.Conv2d):
            pair = (lambda v: tuple(int(a) for a in np.broadcast_to(v, (2,))))
            y = F.conv2d(s.flatten(0, 1), torch.as_tensor(node.weight), torch.as_tensor(node.bias),
                         stride=pair(node.stride), padding=pair(node.padding))
            vals[n] = y.unflatten(0, s.shape[:2])
        elif isinstance(node, nir.LIF):
            alpha, th = math.exp(-1.0 / float(node.tau[0])), float(node.v_threshold[0])
            v, out = torch.zeros_like(s[0]), []
            for xt in s:
                v = alpha * v + xt
                z = (v >= th).double() if hard_reset else torch.floor(v / th).clamp(min=0)
                v = v * (1 - z) if hard_reset else v - z * th
                out.append(z)
            vals[n] = torch.stack(out)
        else:
            assert isinstance(node, nir.Output), type(node)
            vals[n] = s
    return vals


def test_adapted_graph_computes_the_same_under_its_own_metadata(graphs, inputs):
    """The profile restates, never changes: our executor, following the adapted file's
    dt, gives every spike bit for bit and every readout to rounding."""
    g, s = graphs
    for part in PARTS:
        ref = GraphRunner(g.nodes[part]).run(inputs[part])
        got = GraphRunner(s.nodes[part]).run(inputs[part])
        for name, node in g.nodes[part].nodes.items():
            if isinstance(node, nir.LIF):
                assert ref[name].sum() > 0
                assert torch.equal(got[name], ref[name]), (part, name)
        assert torch.allclose(got["output"], ref["output"], rtol=1e-12, atol=1e-12), part


def test_time_constants_read_in_steps_match_the_metadata_dt(graphs):
    g, s = graphs
    enc, senc = g.nodes["encoder"], s.nodes["encoder"]
    lif = senc.nodes["encoder.0.lif"]
    assert math.exp(-1 / lif.tau[0]) == pytest.approx(0.5, abs=1e-15)   # sinabs: per step
    assert senc.metadata["dt"] / lif.tau[0] == 0.5                      # ours: dt/tau
    assert lif.r[0] == 2.0 and lif.tau.shape == (1,)
    assert senc.metadata["target"] == "sinabs" and s.metadata["target"] == "sinabs"
    assert senc.metadata["dt"] == s.nodes["denoiser"].metadata["dt"]
    assert np.array_equal(senc.nodes["encoder.0.synapse"].weight, enc.nodes["encoder.0.synapse"].weight / 2)
    assert np.array_equal(senc.nodes["encoder.0.synapse"].bias, enc.nodes["encoder.0.synapse"].bias / 2)


def test_written_file_has_only_nir_104_fields(graphs, tmp_path):
    _, s = graphs
    path = tmp_path / "sinabs.nir"
    sinabs.write(s, path)
    lifs = []
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "type" in obj and obj["type"][()] == b"LIF":
                lifs.append(name)
                assert set(obj.keys()) <= NIR_104_LIF, (name, sorted(obj.keys()))
        f["node"].visititems(visit)
    assert len(lifs) == sum(isinstance(n, nir.LIF) for p in PARTS for n in s.nodes[p].nodes.values())


def test_generic_graph_without_default_v_reset_reads_back_the_same(graphs, tmp_path):
    g, _ = graphs
    path = tmp_path / "generic-104.nir"
    nir.write(str(path), drop_default_v_reset(g))
    with h5py.File(path) as f:
        assert set(f["node/nodes/encoder/nodes/encoder.0.lif"].keys()) <= NIR_104_LIF
    back = nir.read(str(path))  # nir 1.0.8, type check on
    node = back.nodes["encoder"].nodes["encoder.0.lif"]
    assert not node.v_reset.any() and np.array_equal(node.tau, g.nodes["encoder"].nodes["encoder.0.lif"].tau)


def test_same_spikes_under_sinabs_rule_with_a_hard_reset(graphs, inputs):
    g, s = graphs
    for part in PARTS:
        view = spiking_view(g.nodes[part])
        ref = GraphRunner(view).run(inputs[part])
        got = run_sinabs_rule(sinabs.adapt(view), inputs[part])
        for name, node in view.nodes.items():
            if isinstance(node, nir.LIF):
                assert torch.equal(got[name], ref[name]), (part, name)
    # sinabs' own rule (floor(v) spikes, subtractive reset) is another network
    view = spiking_view(g.nodes["encoder"])
    got = run_sinabs_rule(sinabs.adapt(view), inputs["encoder"], hard_reset=False)
    last = [n for n in view.nodes if isinstance(view.nodes[n], nir.LIF)][-1]
    assert not torch.equal(got[last], GraphRunner(view).run(inputs["encoder"])[last])


def _part(node, name="lif"):
    return nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2, 3, 3])), name: node,
                               "output": nir.Output(output_type=np.array([2, 3, 3]))},
                        edges=[("input", name), (name, "output")], metadata={"dt": DT})


@pytest.mark.parametrize("field,value,words", [
    ("v_reset", 0.5, "v_reset must be 0"),
    ("v_leak", 0.1, "requires v_leak = 0"),
])
def test_what_sinabs_cannot_read_is_refused_by_name(field, value, words):
    node = lif_node((2, 3, 3))
    setattr(node, field, np.full((2, 3, 3), value))
    with pytest.raises(SinabsProfileError, match=f"'lif'.*{words}"):
        adapt_part(_part(node))


def test_non_uniform_parameters_are_refused():
    node = lif_node((2, 3, 3))
    node.tau = node.tau.copy()
    node.tau[0, 0, 0] *= 2
    with pytest.raises(SinabsProfileError, match="'lif': tau differs between neurons"):
        adapt_part(_part(node))


def test_sinabs_itself_reproduces_the_spikes(graphs, inputs, tmp_path):
    py = os.environ.get("SPIKEDIFF_SINABS_PY")
    if not py or not Path(py).exists():
        pytest.skip("sinabs environment not built (SPIKEDIFF_CONSUMERS=sinabs source "
                    "scripts/setup.sh sets SPIKEDIFF_SINABS_PY)")
    view = spiking_view(graphs[0].nodes["decoder"])
    sinabs.write(sinabs.adapt(view), tmp_path / "d.nir")
    x = inputs["decoder"]
    np.savez(tmp_path / "in.npz", x=x.numpy().astype(np.float32))
    proc = subprocess.run([py, str(RUNNER), str(tmp_path / "d.nir"), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz"), "--variant", "hard-reset"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "changed: reset_fn = MembraneReset()" in proc.stderr  # said, not hidden
    got = np.load(tmp_path / "out.npz")
    ref = GraphRunner(view).run(x)
    for name, node in view.nodes.items():
        if isinstance(node, nir.LIF):
            assert np.array_equal(got[f"spikes/{name}"], ref[name].numpy()), name


def test_gain_without_a_private_synapse_goes_into_an_inserted_conv():
    """Spikes straight into a LIF, and a conv shared by two LIFs: the 1/2 gain then needs
    a diagonal 1x1 conv of its own, and the graph still computes the same."""
    conv = nir.Conv2d(input_shape=(3, 3), weight=np.random.default_rng(0).normal(size=(2, 2, 3, 3)),
                      stride=1, padding=1, dilation=1, groups=1, bias=np.full(2, 0.3))
    c = lif_node((2, 3, 3))
    c.r = np.full((2, 3, 3), 3.0)  # spikes alone must be able to fire it
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2, 3, 3])), "conv": conv,
                            "a": lif_node((2, 3, 3)), "b": lif_node((2, 3, 3)),
                            "c": c,
                            "output": nir.Output(output_type=np.array([2, 3, 3]))},
                     edges=[("input", "conv"), ("conv", "a"), ("conv", "b"), ("a", "c"),
                            ("b", "output"), ("c", "output")], metadata={"dt": DT})
    s = adapt_part(g)
    assert {"a.gain", "b.gain", "c.gain"} <= set(s.nodes)
    assert np.array_equal(s.nodes["conv"].weight, conv.weight)
    x = 3 * torch.rand(4, 5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, got = GraphRunner(g).run(x), GraphRunner(s).run(x)
    for n in "abc":
        assert ref[n].sum() > 0 and torch.equal(got[n], ref[n]), n
