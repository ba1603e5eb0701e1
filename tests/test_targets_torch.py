"""Third-party torch NIR consumers (snnTorch 1.0, Norse 1.1, nirtorch 2.6 nir_to_torch) run
our exported spiking layers: each runner (benchmarks/nir_consumers/) as a subprocess, on a
tiny-model file per part, against export/nir_exec.GraphRunner, spike for spike."""
import os
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from export.nir_exec import Exported, GraphRunner, repeat, spiking_view
from export.nir_graph import build_graph
from export.targets import profile
from spikediff.model import active_random_model
from spikediff.vqsvae import image_current

ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = ("nirtorch", "norse", "snntorch")
PARTS = ("encoder", "decoder", "denoiser")


def denoiser_graph(den: nir.NIRGraph) -> nir.NIRGraph:
    """The denoiser without its I readout: layers.0.lif fans out (layers.1.synapse and
    head.first), head.last and head.first sum into Output 'logits', and the last LIF also
    feeds a second Output 'spikes' (Input, Conv2d, LIF, Output only)."""
    lifs = [n for n, v in den.nodes.items() if isinstance(v, nir.LIF)]
    nodes = {k: v for k, v in den.nodes.items() if not isinstance(v, (nir.I, nir.Output))}
    nodes["logits"] = nir.Output(output_type=np.array(den.nodes["head.last"].output_type["output"]))
    nodes["spikes"] = nir.Output(output_type=np.array(den.nodes[lifs[-1]].output_type["output"]))
    edges = [(a, b) for a, b in den.edges if a in nodes and b in nodes]
    edges += [("head.last", "logits"), ("head.first", "logits"), (lifs[-1], "spikes")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(den.metadata))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every consumer on every part, the nine runners started at once (they are mostly
    import time): {(consumer, part): (graph as given, x, returncode, stderr, OUT arrays)}."""
    tmp = tmp_path_factory.mktemp("consumers")
    g = build_graph(active_random_model("tiny"))
    ex = Exported(g, torch.float32)
    gen = torch.Generator().manual_seed(0)
    xs = {}
    xs["encoder"] = repeat(image_current(torch.rand(3, 1, 28, 28, generator=gen)), ex.T_vq)
    xs["decoder"] = ex.decoder_input(torch.randint(0, ex.K, (3, *ex.grid), generator=gen))
    xs["denoiser"] = ex.denoiser_input(torch.randint(0, ex.K + 1, (3, *ex.grid), generator=gen),
                                       torch.randint(1, ex.steps + 1, (3,), generator=gen))
    graphs = {p: spiking_view(g.nodes[p]) for p in ("encoder", "decoder")}
    graphs["denoiser"] = denoiser_graph(g.nodes["denoiser"])
    procs = {}
    for part, sub in graphs.items():
        np.savez(tmp / f"{part}.in.npz", x=xs[part].float().numpy())
        for c in CONSUMERS:
            given = profile(c).adapt(sub) if c != "nirtorch" else sub
            f = tmp / f"{part}.{c}.nir"
            nir.write(str(f), given)
            procs[c, part] = (given, subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks/nir_consumers" / f"{c}.py"), str(f),
                 str(tmp / f"{part}.in.npz"), str(tmp / f"{part}.{c}.out.npz")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"}))
    res = {}
    for (c, part), (given, p) in procs.items():
        _, err = p.communicate(timeout=120)
        out = dict(np.load(tmp / f"{part}.{c}.out.npz")) if p.returncode == 0 else {}
        res[c, part] = (given, xs[part].float(), p.returncode, err, out)
    return res


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("part", PARTS)
def test_consumer_spikes_match(runs, consumer, part):
    given, x, rc, err, out = runs[consumer, part]
    assert rc == 0, err
    ours = GraphRunner(given, dtype=torch.float32).run(x)
    lifs = [n for n, v in given.nodes.items() if isinstance(v, nir.LIF)]
    outs = [n for n, v in given.nodes.items() if isinstance(v, nir.Output)]
    assert sorted(out) == sorted([f"spikes/{n}" for n in lifs] + [f"output/{n}" for n in outs])
    for n in lifs:
        theirs = torch.as_tensor(out[f"spikes/{n}"])
        assert theirs.shape == ours[n].shape, n
        assert 0.05 < float(ours[n].mean()) < 0.8, n  # a non-trivial comparison
        assert torch.equal(theirs, ours[n]), f"{consumer} {part} {n}: " \
            f"{int((theirs != ours[n]).sum())} of {theirs.numel()} spikes differ"
    for o in outs:
        theirs = torch.as_tensor(out[f"output/{o}"])
        if consumer == "norse" and o == "logits":
            # KNOWN NORSE 1.1 DEFECT (nirtorch's deprecated GraphExecutor): nodes run in
            # depth-first order from the input, so head.first (reached after the 'logits'
            # Output) reaches it one step late. Spikes are unaffected (no LIF after a join).
            late = torch.cat([torch.zeros_like(ours["head.first"][:1]), ours["head.first"][:-1]])
            assert torch.allclose(theirs, ours["head.last"] + late, atol=1e-5)
            assert not torch.allclose(theirs, ours[o], atol=1e-3)
            continue
        assert torch.allclose(theirs, ours[o], atol=1e-5), (consumer, part, o)
    notes = [ln for ln in err.splitlines() if ln.startswith("workaround:")]
    if consumer in ("nirtorch", "snntorch") and part == "denoiser":
        # nir_to_torch never returns on two Output nodes, and leaves an Output's two
        # incoming edges unsummed: the runner says what it did
        assert any("loops forever on 2 Output nodes" in ln for ln in notes), err
    else:
        assert not notes, err


def test_snntorch_profile_restates_dt():
    """adapt: the same discrete system at dt = 1e-4 (nested subgraphs too, readouts too)."""
    g = build_graph(active_random_model("tiny"))
    a = profile("snntorch").adapt(g)
    assert g.nodes["encoder"].metadata["dt"] == 1e-3  # input untouched
    for part in PARTS:
        sub, new = g.nodes[part], a.nodes[part]
        assert new.metadata["dt"] == 1e-4
        for name, node in new.nodes.items():
            if isinstance(node, nir.LIF):
                assert np.allclose(node.tau, sub.nodes[name].tau / 10)
        x = torch.rand(sub.metadata["T"], 2, *sub.nodes["input"].input_type["input"]) - 0.5
        r0, r1 = GraphRunner(sub).run(x), GraphRunner(new).run(x)
        for k in r0:
            assert torch.allclose(r0[k], r1[k], atol=1e-9), (part, k)
    n = profile("norse").adapt(g)
    for part in PARTS:  # already at Norse's dt: the same numbers
        assert n.nodes[part].metadata["dt"] == 1e-3
        for name, node in n.nodes[part].nodes.items():
            if isinstance(node, nir.LIF):
                assert np.array_equal(node.tau, g.nodes[part].nodes[name].tau)


def test_runner_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/nir_consumers/nirtorch.py"),
                        str(tmp_path / "none.nir"), str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: nirtorch nir_to_torch:") and r.stderr.count("\n") == 1
