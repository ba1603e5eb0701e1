"""hardware/emulator.py: Lava's fixed_pt arithmetic in torch, bit for bit.

The Lava tests run the same NIR graphs through the worker (fixed_pt) and the
emulator, several calls per graph with new inputs (seeds), so the worker's
net reuse and re-calibration are exercised too, and require every recorded
layer identical at every step and the same population scales. The graphs
(tests/test_lava.py) cover Conv2d, Affine, Linear, Scale, Flatten, LIF, IF,
CubaLIF with v_leak, LI read-outs, summing edges and relays.
"""
import numpy as np
import pytest

nir = pytest.importorskip("nir")

from test_lava import LAVA_PY, conv_graph, misc_graph, wide_graph, write  # noqa: E402

from export import fixed_point as fp  # noqa: E402
from hardware.emulator import Emulator, first_divergence  # noqa: E402
from hardware.lava.worker.plan import MappingError  # noqa: E402

needs_lava = pytest.mark.needs_lava

GRAPHS = {"conv": conv_graph, "misc": misc_graph, "wide": wide_graph}
WEIGHT_KEYS = ("weight",)


def on_grid(graph):
    """The graph with every synapse's weights rounded to the 8-bit grid the
    mapping writes (what [train] quantize = "loihi8" trains to). Gains of the
    test graphs' neurons are powers of two, so rounding the node's weights is
    rounding the link's; Scale and Flatten have none."""
    for node in graph.nodes.values():
        if type(node).__name__ in ("Conv2d", "Affine", "Linear"):
            w = np.asarray(node.weight, dtype=np.float64)
            nz = w[w != 0]
            step, _ = fp.fake_quant_grid(float(np.abs(nz).max()), bool(nz.min() < 0 < nz.max()))
            node.weight = np.round(w / step) * step
    return graph


def inputs_for(name, rng, g, shp, B, call):
    T = int(g.metadata["T"])
    shp = shp if isinstance(shp, tuple) else (shp,)
    if name == "wide":   # call 1: denser input -> larger currents -> the worker rescales
        return (rng.random((T, B, *shp)) < (0.08 if call == 1 else 0.01)).astype(float)
    return rng.uniform(-1, 2, size=(T, B, *shp))


@pytest.fixture(scope="module")
def worker():
    if LAVA_PY is None:
        pytest.skip("Lava env not found")
    from hardware.lava.client import LavaWorker
    with LavaWorker(timeout=300) as w:
        yield w


def assert_identical(res, got, what):
    ref = {k: res.aligned(k) for k in res}
    where = first_divergence(got, ref)
    assert where is None, (f"{what}: emulator and Lava part at layer {where[0]!r}, step "
                           f"{where[1]} ({where[2]} values differ)")
    for k in ref:   # read-out voltages too (first_divergence compares exactly)
        np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{what}: {k}")


@needs_lava
@pytest.mark.parametrize("weights", ["split", "single"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_bit_exact_with_lava_fixed_pt(worker, tmp_path, name, weights):
    """Every layer, every step, three calls (seeds) per graph, batches of 3."""
    rng = np.random.default_rng(11)
    g, shp = GRAPHS[name](rng)
    if weights == "single":
        g = on_grid(g)
    path = write(tmp_path, g, name=f"{name}.nir")
    emu = Emulator(weights=weights)
    spikes = 0
    for call in range(3):
        x = inputs_for(name, rng, g, shp, 3, call)
        res = worker.run(path, None, {"input": x}, mode="fixed_pt", weights=weights)
        got = emu.run(path, None, {"input": x})
        assert res.scales == emu.last_scales, call
        assert_identical(res, got, f"{name}/{weights} call {call}")
        spikes += sum(int(v.sum()) for v in got.values() if v.dtype == np.uint8)
    assert spikes > 50   # the layers fire: agreement is not agreement on silence


def test_single_refuses_weights_that_do_not_fit(tmp_path):
    """A graph whose weights need more than 8 bits: one error naming each such
    layer and both fixes; the split runs it."""
    rng = np.random.default_rng(3)
    g, shp = wide_graph(rng)      # normal weights: ~15 bits needed
    path = write(tmp_path, g)
    x = inputs_for("wide", rng, g, shp, 2, 0)
    with pytest.raises(MappingError) as e:
        Emulator(weights="single").run(path, None, {"input": x})
    msg = str(e.value)
    assert "2 layer(s)" in msg
    for layer in ("lif1", "lif2"):
        assert layer in msg
    assert 'quantize = "loihi8"' in msg and "--lava-weights split" in msg
    assert Emulator(weights="split").run(path, None, {"input": x})["lif1"].sum() > 0
    # conv_graph's weights (multiples of 2**-5, few levels) fit 8 bits as they are
    gc, shc = conv_graph(rng)
    assert Emulator().run(write(tmp_path, gc, name="c.nir"), None,
                          {"input": inputs_for("conv", rng, gc, shc, 2, 0)})["lif1"].sum() > 0
    # on the grid it fits, and one part per link is then all the split writes too
    gq = on_grid(g)
    pq = write(tmp_path, gq, name="q.nir")
    a = Emulator(weights="single").run(pq, None, {"input": x})
    b = Emulator(weights="split").run(pq, None, {"input": x})
    assert first_divergence(a, b) is None


@needs_lava
def test_lava_refuses_weights_that_do_not_fit(worker, tmp_path):
    rng = np.random.default_rng(3)
    g, shp = wide_graph(rng)
    path = write(tmp_path, g)
    from hardware.lava.client import LavaWorkerError
    with pytest.raises(LavaWorkerError, match="do not fit one 8-bit weight per synapse"):
        worker.run(path, None, {"input": inputs_for("wide", rng, g, shp, 2, 0)}, mode="fixed_pt")


def test_first_divergence_names_layer_and_step():
    a = {"l1": np.zeros((4, 2, 3), np.uint8), "l2": np.zeros((4, 2, 3), np.uint8)}
    b = {k: v.copy() for k, v in a.items()}
    assert first_divergence(a, b) is None
    b["l2"][1, 0, 0] = 1
    b["l1"][2, 1, 2] = 1
    b["l1"][2, 0, 0] = 1
    assert first_divergence(a, b, ["l1", "l2"]) == ("l1", 2, 2)
    assert first_divergence(a, b, ["l2", "l1"]) == ("l2", 1, 1)


def test_lava_weight_rules_are_the_mappings():
    """lava_sparse_weights (Lava's clip + LSB truncation) leaves the mapping's
    mantissas unchanged, and does what Lava does to others."""
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    for M in (rng.normal(size=(20, 30)), np.abs(rng.normal(size=(20, 30))),
              -np.abs(rng.normal(size=(5, 7)))):
        for mode in fp.WEIGHT_MODES:
            for Mq, _e in fp.weight_parts(sp.csr_matrix(M * 37.0), mode):
                assert (fp.lava_sparse_weights(Mq) != Mq).nnz == 0
    odd = sp.csr_matrix(np.array([[3, -5, 300], [0, 7, -300]]))
    np.testing.assert_array_equal(fp.lava_sparse_weights(odd).toarray(), [[2, -6, 254], [0, 6, -256]])


def test_fast_calibration_defers_at_decision_boundaries(tmp_path):
    """The emulator's torch float run sums in another order than the worker's
    scipy run; wherever a scale decision is within 1e-6 of flipping it must
    defer to the exact run (else the two could build different integer nets)."""
    from hardware.emulator import _near_boundary
    from hardware.lava.worker.plan import load_graph, plan_graph
    from hardware.lava.worker.quantise import HEADROOM, float_currents
    rng = np.random.default_rng(4)
    g, n_in = wide_graph(rng)
    graph, dt, _ = load_graph(write(tmp_path, g))
    plan = plan_graph(graph, dt)
    x = (rng.random((16, 2, n_in)) < 0.01).astype(float)
    obs = float_currents(plan, {"input": x})
    assert not _near_boundary(plan, {"input": 1.0}, obs)
    edge = dict(obs)   # lif1's current exactly where its scale steps by a factor of 2
    edge["lif1"] = (fp.A_IN_LIMIT / HEADROOM / 2.0 ** 9, 0.0)
    assert _near_boundary(plan, {"input": 1.0}, edge)


# -- frozen scales (one calibration per graph, what a chip holds) ---------------------

def calibration_for(path, x):
    """The calibration of one batch of inputs (quantise's form, JSON-safe)."""
    from hardware.lava.worker.plan import load_graph, plan_graph
    from hardware.lava.worker.quantise import calibration_of
    g, dt, _ = load_graph(str(path))
    return calibration_of(plan_graph(g, dt), {"input": x})


GAINS = (1.0, 4.0, 0.25)   # call c's inputs times GAINS[c]: other ranges than the calibration's


def test_frozen_scales_do_not_follow_the_inputs(tmp_path):
    """Frozen: one net for every call (the scales of the calibration, whatever
    the inputs); per-call: each call's inputs rescale. Inputs beyond the frozen
    range are counted, not hidden."""
    rng = np.random.default_rng(11)
    g, shp = conv_graph(rng)
    path = write(tmp_path, on_grid(g))
    cal = calibration_for(path, inputs_for("conv", rng, g, shp, 3, 0))
    xs = [inputs_for("conv", rng, g, shp, 3, c) * f for c, f in enumerate(GAINS)]
    frozen, per_call = Emulator(), Emulator()
    fs, ps = [], []
    for x in xs:
        frozen.run(path, None, {"input": x}, calibration=cal)
        fs.append(frozen.last_scales)
        per_call.run(path, None, {"input": x})
        ps.append(per_call.last_scales)
    assert fs[0] == fs[1] == fs[2]
    assert ps[0] != ps[1] and ps[1] != ps[2]
    assert len(frozen.frozen) == 1 and not frozen.nets
    net = next(iter(frozen.frozen.values()))
    assert net.input_clipped > 0       # call 1's inputs are 4x the calibration's range


def test_calibration_that_does_not_match_the_graph_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    g, shp = conv_graph(rng)
    path = write(tmp_path, g)
    x = inputs_for("conv", rng, g, shp, 2, 0)
    cal = calibration_for(path, x)
    bad = {"input_range": cal["input_range"], "observed": dict(cal["observed"], nope=[1.0, 1.0])}
    with pytest.raises(MappingError, match="not in the graph: nope"):
        Emulator().run(path, None, {"input": x}, calibration=bad)
    with pytest.raises(MappingError, match="must hold"):
        Emulator().run(path, None, {"input": x}, calibration={"observed": {}})


def test_run_refuses_a_calibration_of_another_graph(tmp_path, capsys):
    """spikediff-run --calibration FILE whose populations are not the graph's:
    one error line, exit code 2."""
    import json

    from hardware.calibration import FORMAT
    from hardware.run import main
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"format": FORMAT, "subgraphs": {"denoiser": {
        "input_range": {"input": 1.0}, "observed": {"layers.9.lif": [1.0, 1.0]}}}}))
    rc = main(["--backend", "emulator", "--random-weights", "tiny", "--lava-weights", "split",
               "--n", "1", "--steps", "2", "--calibration", str(f), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: calibration of the denoiser does not match")
    assert sum(line.startswith("error:") for line in err) == 1


@needs_lava
def test_frozen_scales_bit_exact_with_lava_fixed_pt(worker, tmp_path):
    """Frozen scales: Lava and the emulator build one net from the same
    calibration and agree on every layer at every step over calls with other
    inputs (and ranges) than the calibration's; neither rescales; both count
    the same saturated inputs."""
    rng = np.random.default_rng(11)
    g, shp = conv_graph(rng)
    path = write(tmp_path, on_grid(g))
    cal = calibration_for(path, inputs_for("conv", rng, g, shp, 3, 0))
    emu = Emulator()
    scales, clipped = [], 0
    for call, f in enumerate(GAINS):
        x = inputs_for("conv", rng, g, shp, 3, call) * f
        res = worker.run(path, None, {"input": x}, mode="fixed_pt", calibration=cal)
        got = emu.run(path, None, {"input": x}, calibration=cal)
        assert res.scales == emu.last_scales, call
        scales.append(res.scales)
        clipped += res.input_clipped
        assert_identical(res, got, f"frozen call {call}")
    assert scales[0] == scales[1] == scales[2]
    assert clipped == next(iter(emu.frozen.values())).input_clipped > 0


@needs_lava
def test_frozen_generation_bit_exact_with_lava(tmp_path):
    """A tiny loihi8 model generating with frozen scales (a float-generation
    calibration, the spikediff-run default): Lava and the emulator give the
    same spikes in every layer at every denoiser call, logits, tokens, images."""
    from test_qat import qat_model

    from hardware import backends as B
    m = qat_model()
    path = B.export_to(m, tmp_path / "q.nir")
    kw = dict(grid=m.grid, mask_id=m.denoiser.mask_id, diffusion_steps=m.diffusion_steps,
              steps=3, temperature=1.0)
    emu = B.EmulatorBackend(path)
    B.calibrate(emu, 2, seed=1, **kw)
    doc = emu.calibration_doc
    for seed in (5, 6):   # seeds other than the calibration's
        with B.LavaBackend(path, "fixed_pt", calibration=doc) as lava:
            imgs, toks, par = B.generate(lava, 2, seed=seed, reference=emu, **kw)
        d = par.to_dict()
        assert d["all_spikes_identical"], par.format()
        assert d["max_abs_logit_diff"] == 0 and d["max_abs_image_diff"] == 0
        assert d["differing_proposals"] == 0
        assert all(r["spikes"] > 0 for r in d["layers"])
    assert emu.fixed_point_report()["scales"] == "frozen" and len(emu.emu.frozen) == 2
