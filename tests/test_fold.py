"""The folded, spike-fed denoiser input (spikediff.fold): exact, and what the
inference path (sampling, NIR, energy) runs."""
import nir
import pytest
import torch

from export.nir_graph import build_graph
from hardware.energy.counting import Recorder, model_layers
from hardware.energy.constants import EnergyConstants
from hardware.energy.report import build_report
from export.fixed_point import synapses_per_connection
from spikediff import checkpoint
from spikediff.checkpoint import SHIPPED
from spikediff.fold import fold_denoiser
from spikediff.model import active_random_model


def tiny_pair():
    m = active_random_model("tiny", 0)            # trained (factored) form
    folded = active_random_model("tiny", 0).inference()
    return m, folded


def double_pair(m):
    """(training form, folded form) of m, both in float64 (folded from float64 weights)."""
    import copy
    a = copy.deepcopy(m)
    a.vq.double()
    a.denoiser.double()
    b = copy.deepcopy(a).inference()
    return a.eval(), b


def test_fold_is_exact_in_float64():
    m, f = double_pair(active_random_model("tiny", 0))
    a, b = m.denoiser, f.denoiser
    assert b.spike_input and not hasattr(b, "token_embed")
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, a.mask_id + 1, (32, *m.grid), generator=g)
    t = torch.randint(1, m.diffusion_steps + 1, (32,), generator=g)
    with torch.no_grad():
        la, lb = a.layers[0], b.layers[0]
        ca = la.bn(la.synapse(a.network_input(tok, t)))
        cb = lb.bn(lb.synapse(b.network_input(tok, t)))
        assert (ca - cb).abs().max() < 1e-12            # the same current, padding included
        sa, sb = a.spikes(tok, t), b.spikes(tok, t)
        assert all(torch.equal(x, y) for x, y in zip(sa, sb))
        assert sa[0].mean() > 0.05                       # and the layer really fires
        assert torch.allclose(a(tok, t), b(tok, t), atol=1e-10)


def test_folded_input_is_two_binary_spikes_per_position():
    _, f = tiny_pair()
    den = f.denoiser
    tok = torch.randint(0, den.mask_id + 1, (4, *f.grid))
    x = den.network_input(tok, torch.tensor([1, 2, 3, den.diffusion_steps]))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert (x.sum(1) == 2).all()


def test_fold_keeps_draws_for_the_same_seed():
    m, f = tiny_pair()
    for model in (m, f):
        model.config.diffusion.refine_steps = 2
    a = m.generate(16, generator=torch.Generator().manual_seed(3))
    b = f.generate(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[1], b[1])
    assert (a[0] - b[0]).abs().max() < 1e-6


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped checkpoint not built yet")
def test_shipped_checkpoint_loads_folded_and_draws_the_same_grids():
    ck = checkpoint.load(SHIPPED)
    assert checkpoint.load_model(SHIPPED).denoiser.spike_input
    # In float64 the fold changes no spike, hence no draw. (In float32 both forms
    # round differently, ~1e-5 on the first layer's current, the folded form 6x
    # closer to exact; a membrane that close to threshold can flip a spike.)
    a, b = double_pair(checkpoint.model_from(ck, fold=False))
    assert b.denoiser.spike_input and not a.denoiser.spike_input
    from spikediff.diffusion import Refinement
    ta = a.generate(8, generator=torch.Generator().manual_seed(0), refine=Refinement(10, 0.1, 0.3))
    tb = b.generate(8, generator=torch.Generator().manual_seed(0), refine=Refinement(10, 0.1, 0.3))
    assert torch.equal(ta[1], tb[1])
    assert (ta[0] - tb[0]).abs().max() < 1e-9
    assert fold_denoiser(b.denoiser) is b.denoiser   # folding twice changes nothing


def test_nir_denoiser_has_no_conv_to_conv_chain(tmp_path):
    m, _ = tiny_pair()
    g = build_graph(m)                                # folds a training-form model itself
    den = g.nodes["denoiser"]
    convs = {n for n, node in den.nodes.items() if isinstance(node, nir.Conv2d)}
    assert not [(a, b) for a, b in den.edges if a in convs and b in convs]
    assert ("input", "layers.0.synapse") in den.edges
    assert den.nodes["layers.0.synapse"].weight.shape[1] == den.nodes["input"].input_type[
        "input"][0]


def test_energy_counts_the_folded_input_as_spikes_and_the_ann_as_gathers():
    _, f = tiny_pair()
    T = f.denoiser.cfg.T
    with Recorder(f, verify=True) as rec:
        f.generate(2, steps=3, generator=torch.Generator().manual_seed(0))
    c = rec.tally.counts["denoiser.0"]
    spec = {s.name: s for s in model_layers(f)}["denoiser.0"]
    assert not spec.analog and spec.one_hot
    cells = f.grid[0] * f.grid[1]
    assert c.macs == 0 and c.nonbinary == 0
    assert c.events == 2 * cells * T * 2 * 3           # 2 spikes/position, T steps, 2 images x 3 calls
    assert rec.tally.brute["denoiser.0"] == c.synops
    rep = build_report(f, rec.tally, EnergyConstants(), {"n_generated": 2, "sampling_steps": 3})
    row = next(r for r in rep["layers"] if r["name"] == "denoiser.0")
    # the ANN twin gathers and adds the same weights once per call, not T times, no MACs
    assert row["ann_macs"] == 0 and row["ann_adds"] == pytest.approx(row["synops"] / T)
    assert row["ann_45nm_pj"] == pytest.approx(row["ann_adds"] * 0.9)
    assert rep["per_generated_image"]["macs"] == rep["components"]["spike_generator"]["macs"]


def test_fixed_point_split_is_counted_where_the_mapping_splits():
    assert synapses_per_connection(torch.tensor([2.0, -4.0, 254.0, -100.0])) == 1
    assert synapses_per_connection(torch.tensor([3.0, 5.0, 255.0])) == 1          # one sign
    assert synapses_per_connection(torch.tensor([0.123, -0.456, 0.789])) == 2
    # a power-of-two rescaling (the mapping's population scale) does not change it
    assert synapses_per_connection(torch.tensor([2.0, -4.0, 254.0]) / 2 ** 10) == 1
