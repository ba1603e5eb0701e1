"""Export to NIR and ONNX, checked by re-running what was written."""
import copy

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export import cli as export_cli
from export import nir_schema
from export.nir_exec import Exported, GraphRunner, repeat, spiking_view, verify
from export.nir_graph import (ExportError, build_graph, convT_phase, li_node, lif_node,
                              integrator_node, node_counts, write)
from spikediff.checkpoint import SHIPPED, Checkpoint, atomic_save
from spikediff.model import active_random_model
from spikediff.neuron import DT, lif_parameters, lif_sequence, psp
from snntorch_helpers import run_snntorch  # tests/snntorch_helpers.py


def active_model(preset="tiny", seed=0, token_input=None):
    return active_random_model(preset, seed, token_input=token_input)


@pytest.fixture(scope="module")
def tiny():
    return active_model()


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("nir") / "tiny.nir"
    write(build_graph(tiny), path)
    return path


def save_ckpt(model, path):
    atomic_save(Checkpoint(config=model.config.to_dict(),
                           data={"channels": model.channels, "image_size": model.image_size,
                                 "name": "mnist", "n_train": 0},
                           vq=model.vq.state_dict(), denoiser=model.denoiser.state_dict(),
                           stage="denoiser"), path)


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT})


def _assert_exact(rows):
    for r in rows:
        assert r["mismatches"] == 0, r
        if r["kind"] == "values":
            assert r["max_abs"] < 1e-5, r
    spiking = [r for r in rows if r["kind"] == "spikes"]
    assert all(0.05 < r["spike_rate"] < 0.8 for r in spiking), spiking  # non-trivial


# -- each node kind on tiny graphs ---------------------------------------------------
def test_lif_node_is_norse_lif_exactly():
    x = torch.randn(12, 5, 3, 4, dtype=torch.float64) * 2
    g = _graph({"input": nir.Input(np.array([3, 4])), "lif": lif_node((3, 4)),
                "output": nir.Output(np.array([3, 4]))}, [("input", "lif"), ("lif", "output")])
    got = GraphRunner(g).run(x)["lif"]
    ref = lif_sequence(x, lif_parameters())
    assert ref.sum() > 10 and torch.equal(got, ref)


def test_li_and_i_readouts():
    s = (torch.rand(6, 2, 5, dtype=torch.float64) > 0.5).to(torch.float64)
    g = _graph({"input": nir.Input(np.array([5])), "psp": li_node((5,), 0.8, 0.3),
                "rate": integrator_node((5,), 0.7 / 6), "output": nir.Output(np.array([5]))},
               [("input", "psp"), ("input", "rate"), ("psp", "output"), ("rate", "output")])
    vals = GraphRunner(g).run(s)
    torch.testing.assert_close(vals["psp"][-1], 0.3 * psp(s, 0.8), rtol=0, atol=1e-12)
    torch.testing.assert_close(vals["rate"][-1], 0.7 * s.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(vals["output"][-1], 0.3 * psp(s, 0.8) + 0.7 * s.mean(0),
                               rtol=0, atol=1e-12)  # two edges into one node sum


def test_conv_affine_and_summing_edges():
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=(4, 2, 1, 1))
    b1, b2 = rng.normal(size=4), rng.normal(size=4)
    wa, ba = rng.normal(size=(3, 4 * 5 * 5)), rng.normal(size=3)
    g = _graph({
        "input": nir.Input(np.array([2, 5, 5])),
        "a": nir.Conv2d((5, 5), w1, 1, 1, 1, 1, b1), "b": nir.Conv2d((5, 5), w2, 1, 0, 1, 1, b2),
        "lif": lif_node((4, 5, 5)), "flat": nir.Flatten({"input": np.array([4, 5, 5])}, 0, 2),
        "fc": nir.Affine(wa, ba), "output": nir.Output(np.array([3]))},
        [("input", "a"), ("input", "b"), ("a", "lif"), ("b", "lif"), ("lif", "flat"),
         ("flat", "fc"), ("fc", "output")])
    x = torch.randn(3, 2, 2, 5, 5, dtype=torch.float64)
    vals = GraphRunner(g).run(x)
    t = torch.from_numpy
    cur = (F.conv2d(x.flatten(0, 1), t(w1), t(b1), padding=1)
           + F.conv2d(x.flatten(0, 1), t(w2), t(b2))).view(3, 2, 4, 5, 5)
    torch.testing.assert_close(vals["a"] + vals["b"], cur)
    spikes = lif_sequence(cur, lif_parameters())
    assert torch.equal(vals["lif"], spikes)
    torch.testing.assert_close(vals["fc"], spikes.flatten(2) @ t(wa).T + t(ba))


def test_cycle_is_refused():
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "a": lif_node((2,)),
                            "s": nir.Scale(np.ones(2)), "output": nir.Output(np.array([2]))},
                     edges=[("input", "a"), ("a", "s"), ("s", "a"), ("a", "output")],
                     metadata={"dt": DT}, type_check=False)
    with pytest.raises(Exception, match="cycle"):
        GraphRunner(g)


@pytest.mark.parametrize("stride,p_in", [(2, 1), (2, 2), (1, 4)])
def test_polyphase_convT_is_exact(stride, p_in):
    torch.manual_seed(stride + p_in)
    ct = torch.nn.ConvTranspose2d(3, 2, 3, stride=stride, padding=1,
                                  output_padding=stride - 1).double()
    W, b, p_out = convT_phase(ct, p_in)
    n = 6
    x = torch.randn(2, 3, p_in * n, p_in * n, dtype=torch.float64)
    ref = F.pixel_unshuffle(ct(x), p_out)
    xin = F.pixel_unshuffle(x, p_in) if p_in > 1 else x
    got = F.conv2d(xin, W, b, padding=1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_unsupported_layer_is_named():
    m = active_model()
    m.vq.decoder[1].synapse = torch.nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
    with pytest.raises(ExportError, match="vq.decoder.1"):
        build_graph(m)
    m = active_model()
    m.denoiser.layers[1] = torch.nn.Identity()
    with pytest.raises(ExportError, match="denoiser.layers.1"):
        build_graph(m)


# -- the tiny model -------------------------------------------------------------------
def test_file_structure_and_metadata(tiny_file, tiny):
    g = nir.read(str(tiny_file))  # type check on
    assert {"encoder", "decoder", "denoiser"} <= set(g.nodes)
    counts = node_counts(g)
    assert counts["encoder"] == {"Conv2d": 3, "I": 1, "Input": 1, "LI": 1, "LIF": 3, "Output": 1}
    # the code lookup is folded into the spike generator's synapse, and the denoiser's
    # embeddings into its first synapse: no Conv2d -> Conv2d chain anywhere
    assert counts["decoder"] == {"Conv2d": 4, "Input": 1, "LI": 1, "LIF": 3, "Output": 1}
    assert counts["denoiser"] == {"Conv2d": 4, "I": 1, "Input": 1, "LIF": 2, "Output": 1}
    for p in ("encoder", "decoder", "denoiser"):
        sub = g.nodes[p]
        chains = [(a, b) for a, b in sub.edges if isinstance(sub.nodes[a], nir.Conv2d)
                  and isinstance(sub.nodes[b], nir.Conv2d)]
        assert chains == [], (p, chains)
    # conventions as typed keys, not prose
    assert nir_schema.check(g) == ["encoder", "decoder", "denoiser"]
    for p in ("encoder", "decoder", "denoiser"):
        md = g.nodes[p].metadata
        assert float(md["dt"]) == DT and int(md["T"]) == 2 and md["preset"] == "tiny"
        assert md["integration"] == "forward_euler" and int(md["edge_delay_steps"]) == 0
        assert md["threshold_test"] == "greater" and md["reset"] == "hard"
        assert md["form"] == "full" and nir_schema.strs(md["readout"]["nodes"]) == ["output"]
        assert [int(v) for v in md["input"]["shape"]] == list(
            g.nodes[p].nodes["input"].input_type["input"])
        assert len(nir_schema.host_records(md)) >= 2 and md["spikediff_version"]
    codebook = nir_schema.find(g.nodes["encoder"].metadata, "nearest_code")["codebook"]
    assert np.array_equal(codebook, tiny.vq.codebook.embedding.detach().double().numpy())
    # phase-stacked decoder at the latent grid, nothing dense
    assert list(g.nodes["decoder"].output_type["output"]) == [16, 7, 7]
    assert not any(isinstance(n, nir.Affine) for p in ("encoder", "decoder", "denoiser")
                   for n in g.nodes[p].nodes.values())
    lif = g.nodes["encoder"].nodes["encoder.0.lif"]
    assert np.allclose(lif.tau, 2 * DT) and np.all(lif.v_threshold == 1) and np.all(lif.r == 1)
    # the graph written once more reads back the same
    g2 = build_graph(tiny)
    assert node_counts(g2) == counts


@pytest.mark.parametrize("part", [None, "encoder", "decoder", "denoiser"])
@pytest.mark.parametrize("form", ["full", "spiking"])
def test_parts_and_spiking_form_reproduce_the_model(tiny, part, form, tmp_path):
    """One part per file and the spiking form (readouts as host records) run the same
    network: every layer's spikes identical, readouts to float rounding."""
    g = build_graph(tiny, part=part, form=form)
    path = tmp_path / "m.nir"
    write(g, path)
    ex = Exported.read(path)
    assert ex.parts == ([part] if part else ["encoder", "decoder", "denoiser"])
    if form == "spiking":
        for sub in ex.subs.values():  # every node a chip sees: a synapse or a spiking neuron
            kinds = {type(n).__name__ for n in sub.nodes.values()}
            assert kinds <= {"Input", "Conv2d", "LIF", "Output"}, kinds
    rows = verify(tiny, ex, n=2, generate=1)
    _assert_exact(rows)
    assert {r["part"] for r in rows} >= set(ex.parts)


def test_default_file_keeps_v_reset_and_says_how_to_reach_nir_1_0_4(tiny, tmp_path, capsys):
    """nir 1.0.4 reads a LIF without v_reset as a subtractive reset: the default file keeps
    the field (so 1.0.4 refuses it instead of misreading it) and the export names the
    flag for 1.0.4 readers."""
    ckpt = tmp_path / "tiny.pt"
    save_ckpt(tiny, ckpt)
    assert export_cli.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.nir")]) == 0
    assert "for nir 1.0.4 readers such as sinabs, --target sinabs" in capsys.readouterr().out
    g = nir.read(str(tmp_path / "m.nir"))
    assert np.all(g.nodes["encoder"].nodes["encoder.0.lif"].v_reset == 0)


def test_metadata_that_disagrees_with_the_graph_is_one_error(tiny, tmp_path):
    g = build_graph(tiny, part="denoiser")
    for change, words in (
            (lambda md: md["input"].update(shape=[3, 7, 7]), "disagrees with the Input node"),
            (lambda md: md.update(reset="subtract"), "implements 'hard' only"),
            (lambda md: md.update(T=0), "T >= 1"),
            (lambda md: md["readout"].update(nodes=["nope"]), "not an Output node"),
            (lambda md: md.update(format="spikediff-nir/1"), "export the checkpoint again"),
            (lambda md: md.pop("format"), "not a spikediff NIR export")):
        bad = copy.deepcopy(g)
        change(bad.metadata)
        path = tmp_path / "bad.nir"
        nir.write(str(path), bad)
        with pytest.raises(nir_schema.NirFormatError, match=words):
            Exported.read(path)


@pytest.mark.parametrize("token_input", ["embed", "raw"])
def test_reimported_graph_reproduces_model(token_input, tmp_path):
    m = active_model(token_input=token_input)
    path = tmp_path / "m.nir"
    nir.write(str(path), build_graph(m))
    rows = verify(m, Exported.read(path), n=3, generate=2)
    _assert_exact(rows)
    names = {r["node"] for r in rows}
    assert {"encoder.2.lif", "decoder.1.lif", "layers.1.lif", "images", "tokens"} <= names


def test_float32_run_agrees(tiny_file, tiny):
    rows = verify(tiny, Exported.read(tiny_file, dtype=torch.float32), n=2, generate=1)
    for r in rows:
        if r["kind"] != "spikes" and r["kind"] != "codes":
            assert r["max_abs"] < 1e-4, r


def test_snntorch_imports_the_encoder(tiny_file):
    g = nir.read(str(tiny_file))
    enc = g.nodes["encoder"]
    x = repeat(torch.rand(3, 1, 28, 28) - 0.5, int(enc.metadata["T"]))
    ours = GraphRunner(enc, dtype=torch.float32).run(x)
    # snnTorch 1.0 assumes dt = 1e-4 (beta = 1 - 1e-4/tau, threshold / (r*dt/tau)) and ignores
    # metadata: the same discrete system with every tau scaled to that dt matches exactly.
    for i in range(3):
        view = spiking_view(enc, last=f"encoder.{i}.lif", dt=1e-4)
        theirs = run_snntorch(view, x)
        assert ours[f"encoder.{i}.lif"].sum() > 0
        assert torch.equal(theirs, ours[f"encoder.{i}.lif"])
    # as written (dt = 1e-3), snnTorch sees beta 0.95 and threshold 20: no spike at T = 2
    assert run_snntorch(spiking_view(enc), x).sum() == 0


def test_onnx_matches_pytorch(tiny, tmp_path):
    from export.onnx_export import check_onnx, export_onnx
    paths = export_onnx(tiny, tmp_path)
    res = check_onnx(tiny, paths, n=3)
    for k, v in res.items():
        assert (v == 0) if "mismatch" in k else (v < 1e-4), (k, v)


# -- command line -------------------------------------------------------------------
def test_cli(tiny, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    save_ckpt(tiny, ckpt)
    out = tmp_path / "m.nir"
    assert export_cli.main(["--list"]) == 0
    assert "onnx" in capsys.readouterr().out
    assert export_cli.main(["--to", "nir", "--checkpoint", str(ckpt), "--out", str(out),
                            "--verify"]) == 0
    text = capsys.readouterr().out
    assert "LIF 8" in text and "all spike trains identical" in text
    nir.read(str(out))
    assert export_cli.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(ckpt), "--out", str(out), "--force"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    assert export_cli.main(["--to", "onnx", "--checkpoint", str(ckpt), "--out",
                            str(tmp_path / "onnx"), "--verify"]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "decoder.onnx", "denoiser.onnx", "encoder.onnx"]
    # one part, spiking only; then --verify FILE checks that file and writes nothing
    part = tmp_path / "den.nir"
    assert export_cli.main(["--checkpoint", str(ckpt), "--out", str(part), "--part", "denoiser",
                            "--spiking-only"]) == 0
    assert "denoiser  Conv2d 4, Input 1, LIF 2, Output 1" in capsys.readouterr().out
    before = sorted(tmp_path.iterdir())
    assert export_cli.main(["--verify", str(part), "--checkpoint", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert f"verification of {part} (denoiser" in text and "all spike trains identical" in text
    assert sorted(tmp_path.iterdir()) == before
    # the file against other weights: refused in one line
    assert export_cli.main(["--verify", str(part)]) == 2
    assert "exported from other weights" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert export_cli.main(["--checkpoint", str(tmp_path / "none.pt"),
                            "--out", str(tmp_path / "x.nir")]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert export_cli.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.nir")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "corrupt" in err and len(err.strip().splitlines()) == 1
    if export_cli.netx_module() is None:
        assert export_cli.main(["--to", "netx", "--out", str(tmp_path / "n")]) == 2
        assert "not available" in capsys.readouterr().err


# -- the shipped checkpoint ---------------------------------------------------------------
@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped checkpoint not built yet")
def test_shipped_checkpoint(tmp_path):
    from spikediff.checkpoint import load_model
    m = load_model(None)
    path = tmp_path / "shipped.nir"
    nir.write(str(path), build_graph(m))
    rows = verify(m, Exported.read(path), n=1, generate=1)
    for r in rows:
        assert r["mismatches"] == 0, r
        if r["kind"] == "values":
            assert r["max_abs"] < 1e-5, r
