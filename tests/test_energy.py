"""Energy counting (hardware.energy): hand-computed counts, brute force, scaling, CLI."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from hardware.energy.cli import main
from hardware.energy.constants import ConstantsError, EnergyConstants, load_constants
from hardware.energy.counting import (LayerCounts, Recorder, Tally, brute_force_synops,
                                      count_layer, count_recording, dense_macs, fanout_map,
                                      model_layers, padded_macs, spec_of)
from hardware.energy.report import layer_energies, build_report
from spikediff.config import load_config
from spikediff.model import build_model
from spikediff.neuron import LIF


def brute_force_dense_macs(spec) -> int:
    """Dense MACs of one sample, by the brute-force method on an all-ones input."""
    return brute_force_synops(spec, torch.ones(1, 1, *spec.in_shape))


def tiny_model(T=None, seed=0, lively=True):
    torch.manual_seed(seed)
    cfg = load_config("tiny")
    if T is not None:
        cfg.vq.T = cfg.denoiser.T = T
    m = build_model(cfg, 1, 28).eval()
    if lively:  # random weights barely spike through eval-mode BN: make them fire
        for mod in [*m.vq.modules(), *m.denoiser.modules()]:
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.data.fill_(3.0)
                mod.bias.data.fill_(0.6)
    return m


def spikes_at(T, shape, points):
    x = torch.zeros(T, 1, *shape)
    for t, *idx in points:
        x[(t, 0, *idx)] = 1.0
    return x


# ------------------------------------------------------------ hand counts

def test_conv3x3_pad1_stride2_hand_count():
    conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    spec = spec_of(conv, "c", "encoder", (1, 5, 5), analog=False, has_neurons=True)
    assert spec.out_shape == (2, 3, 3)
    # Output o reads inputs 2o-1, 2o, 2o+1 (taps 0, 1, 2). Per row/column of
    # the 5-wide input, the outputs reaching index i:
    #   i=0: o=0 (tap 1)        -> 1   (its tap-0 partner is padding)
    #   i=1: o=0 (tap 2), o=1 (tap 0) -> 2
    #   i=2: o=1 (tap 1)        -> 1
    #   i=3: o=1 (tap 2), o=2 (tap 0) -> 2
    #   i=4: o=2 (tap 1)        -> 1   (nothing reads past it: the stride grid ends)
    assert fanout_map(spec).tolist() == [[r * c * 2 for c in (1, 2, 1, 2, 1)] for r in (1, 2, 1, 2, 1)]
    # Spikes, 2 output channels each:
    #   corner (0,0): 1*1*2 = 2;  corner (4,4): 1*1*2 = 2;  edge (0,1): 1*2*2 = 4;
    #   centre (2,2): 1*1*2 = 2;  (1,1) at t=0 and again at t=1: 2*2*2 = 8 each.
    #   total = 2 + 2 + 4 + 2 + 8 + 8 = 26
    x = spikes_at(2, (1, 5, 5), [(0, 0, 0, 0), (0, 0, 4, 4), (0, 0, 0, 1), (0, 0, 2, 2),
                                 (0, 0, 1, 1), (1, 0, 1, 1)])
    c = count_layer(spec, x)
    assert c.synops == 26 and c.events == 6
    assert brute_force_synops(spec, x) == 26
    # and the real layer agrees: all-ones weights, summed outputs
    ones = copy.deepcopy(conv)
    ones.weight.data.fill_(1.0)
    ones.bias.data.zero_()
    assert ones(x.reshape(-1, 1, 5, 5)).sum().item() == 26


def test_dense_layer_hand_count():
    spec = spec_of(nn.Linear(4, 3), "fc", "denoiser", (4,), analog=False, has_neurons=True)
    # 3 input spikes, each reaching all 3 outputs: 9 accumulates
    x = torch.tensor([[[1.0, 0, 1, 0]], [[0, 0, 0, 1]]])  # [T=2, B=1, 4]
    c = count_layer(spec, x)
    assert (c.events, c.synops) == (3, 9)
    assert brute_force_synops(spec, x) == 9
    assert dense_macs(spec) == padded_macs(spec) == 12


def test_two_layer_chain_hand_count():
    fc1, fc2 = nn.Linear(3, 2, bias=False), nn.Linear(2, 5, bias=False)
    fc1.weight.data = torch.tensor([[2.5, 0, 0], [0, 0, 0]])
    fc2.weight.data.zero_()
    s1 = spec_of(fc1, "l1", "decoder", (3,), analog=False, has_neurons=True)
    s2 = spec_of(fc2, "l2", "decoder", (2,), analog=False, has_neurons=True)
    # input channel 0 spikes at t=0,1,2, channel 1 at t=1: 4 events -> 4*2 = 8 ACs
    x = torch.tensor([[[1.0, 0, 0]], [[1, 1, 0]], [[1, 0, 0]]])
    lif = LIF()
    h = lif(fc1(x))
    # neuron 0 gets 2.5 at each step: v = 1.25 > 1, spikes and resets, 3 times
    assert h[:, 0, 0].tolist() == [1, 1, 1] and h[:, 0, 1].sum() == 0
    y = lif(fc2(h))
    res = count_recording([s1, s2], {"l1": x, "l2": h}, {"l1": h, "l2": y})
    assert res["l1"].synops == 8 and res["l2"].synops == 3 * 5
    assert (res["l1"].neuron_updates, res["l1"].active) == (2 * 3, 3)
    assert (res["l2"].neuron_updates, res["l2"].active) == (5 * 3, 0)
    tot = res["l1"] + res["l2"]
    e = layer_energies(tot.scaled(1), 1, EnergyConstants())
    # 45 nm: 23 ACs x 0.9 + 21 neuron updates x 3.6 (subtract, shift, add, compare)
    assert e["snn_45nm_pj"] == pytest.approx(23 * 0.9 + 21 * 3.6)
    # Loihi: 23 synops x 23.6 + 18 silent x 52 + 3 active x 81 neuron updates
    assert e["loihi_pj"] == pytest.approx(23 * 23.6 + 18 * 52 + 3 * 81)
    # two 8-bit synapses per connection (fixed-point split): twice the synaptic part only
    e2 = layer_energies(tot.scaled(1), 2, EnergyConstants())
    assert e2["loihi_pj"] == pytest.approx(46 * 23.6 + 18 * 52 + 3 * 81)
    assert e2["loihi_one_synapse_pj"] == pytest.approx(e["loihi_pj"])
    assert e2["snn_45nm_pj"] == e["snn_45nm_pj"]


def test_conv_transpose_corner_hand_count():
    ct = nn.ConvTranspose2d(1, 3, 3, stride=2, padding=1, output_padding=1)
    spec = spec_of(ct, "up", "decoder", (1, 4, 4), analog=False, has_neurons=True)
    assert spec.out_shape == (3, 8, 8)
    # input i writes outputs 2i - 1 + a, a = 0, 1, 2:
    #   corner (0,0): rows/cols -1 (cropped by padding), 0, 1 -> 2 x 2 taps x 3 channels = 12
    #   corner (3,3): rows/cols 5, 6, 7 (7 exists thanks to output_padding) -> 3 x 3 x 3 = 27
    x0 = spikes_at(1, (1, 4, 4), [(0, 0, 0, 0)])
    x3 = spikes_at(1, (1, 4, 4), [(0, 0, 3, 3)])
    assert count_layer(spec, x0).synops == 12 == brute_force_synops(spec, x0)
    assert count_layer(spec, x3).synops == 27 == brute_force_synops(spec, x3)
    ones = copy.deepcopy(ct)
    ones.weight.data.fill_(1.0)
    ones.bias.data.zero_()
    assert ones(x0[0]).sum().item() == 12 and ones(x3[0]).sum().item() == 27


def test_ann_macs_of_known_layers():
    m = tiny_model(lively=False)
    specs = {s.name: s for s in model_layers(m)}
    # encoder.0: Conv(1->8, k3 s2 p1) on 28x28 -> 14x14. Per dimension the taps
    # that exist: 14 outputs x 3 taps minus the one on padding (output 0, tap 0) = 41.
    s = specs["encoder.0"]
    assert dense_macs(s) == 41 * 41 * 8 == brute_force_dense_macs(s)
    assert padded_macs(s) == 14 * 14 * 9 * 8
    # the 1x1 spike generator on the 7x7 grid: 4 x 4 x 49, padding irrelevant
    s = specs["spike_generator"]
    assert dense_macs(s) == padded_macs(s) == 4 * 4 * 49
    # paper preset, first encoder layer 1->32: 41*41*32
    paper = build_model(load_config("paper"), 1, 28)
    assert dense_macs(model_layers(paper)[0]) == 53792


# -------------------------------------------------- fan-out vs brute force

def test_fanout_equals_brute_force_every_layer_of_tiny_model():
    m = tiny_model(lively=False)
    g = torch.Generator().manual_seed(1)
    for spec in model_layers(m):
        # analog-fed layers too: their geometry is checked as if they received spikes
        spec = dataclasses.replace(spec, analog=False)
        x = (torch.rand(3, 2, *spec.in_shape, generator=g) < 0.3).float()
        assert count_layer(spec, x).synops == brute_force_synops(spec, x), spec.name
        assert dense_macs(spec) == brute_force_dense_macs(spec), spec.name
        # full density: every connection once per event
        full = torch.ones(1, 1, *spec.in_shape)
        assert count_layer(spec, full).synops == dense_macs(spec), spec.name


def test_recorder_on_full_model_matches_brute_force_and_pieces():
    m = tiny_model()
    imgs = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with Recorder(m, verify=True) as rec:
        enc = m.vq.encode_spikes(imgs)
        m.generate(2, steps=3, generator=torch.Generator().manual_seed(0))
    t = rec.tally
    spiking = [s.name for s in model_layers(m) if not s.analog]
    assert set(t.brute) == set(spiking)
    for name in spiking:
        assert t.counts[name].synops == t.brute[name], name
    assert sum(t.counts[n].synops for n in spiking) > 0       # the check saw real spikes
    assert t.counts["denoiser.0"].samples == 2 * 3            # 2 images x 3 sampling steps
    # the head is counted from its per-step spike input, not the mean over T it runs on
    assert t.counts["denoiser.head"].samples == 2 * 3
    # the hooks record exactly what the model's pieces produce
    T = m.vq.cfg.T
    direct = count_recording(model_layers(m), {"encoder.0": imgs - 0.5, "encoder.1": enc[0],
                                               "encoder.2": enc[1]},
                             {f"encoder.{i}": e for i, e in enumerate(enc)}, T=T)
    for name, c in direct.items():
        assert t.counts[name] == c, name
    # the entry point for other back ends gives the same totals
    other = Tally()
    other.add_recording(model_layers(m), {"encoder.0": imgs - 0.5, "encoder.1": enc[0],
                                          "encoder.2": enc[1]},
                        {f"encoder.{i}": e for i, e in enumerate(enc)}, T=T, verify=True)
    for name in direct:
        assert other.counts[name] == t.counts[name], name
    assert other.brute["encoder.1"] == t.brute["encoder.1"]
    # and the report carries the agreement through
    rep = build_report(m, t, EnergyConstants(), {"n_generated": 2, "sampling_steps": 3})
    assert rep["brute_force_check"]["all_agree"]
    assert rep["components"]["denoiser"]["calls_per_image"] == 3
    # refinement steps are denoiser passes too, and are counted as such
    m.config.diffusion.refine_steps = 2
    with Recorder(m) as rec:
        m.generate(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert rec.tally.counts["denoiser.0"].samples == 2 * (3 + 2)
    rep = build_report(m, rec.tally, EnergyConstants(), {"n_generated": 2, "sampling_steps": 3})
    assert rep["components"]["denoiser"]["calls_per_image"] == 5


def test_counts_scale_with_T():
    m2, m4 = tiny_model(T=2), tiny_model(T=4)
    m4.vq.load_state_dict(m2.vq.state_dict())
    imgs = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    res = {}
    for T, m in ((2, m2), (4, m4)):
        with Recorder(m) as rec:
            m.vq.encode_spikes(imgs)
        res[T] = rec.tally.counts
    a, b = res[2]["encoder.0"], res[4]["encoder.0"]
    assert b.macs == 2 * a.macs and b.macs_once == a.macs_once     # analog input at every step
    for name in ("encoder.0", "encoder.1", "encoder.2"):
        assert res[4][name].neuron_updates == 2 * res[2][name].neuron_updates
        for r in (res[2][name], res[4][name]):
            assert 0.0 <= r.firing_rate <= 1.0
            assert r.active <= r.neuron_updates
    # the same per-step analog input, given explicitly over 2T steps, doubles MACs
    spec = model_layers(m2)[0]
    x = (imgs - 0.5).unsqueeze(0)
    c1, c2 = count_layer(spec, x.expand(2, *imgs.shape)), count_layer(spec, x.expand(4, *imgs.shape))
    assert c2.macs == 2 * c1.macs and c1.macs_once == c2.macs_once == dense_macs(spec) * 2
    # spikes repeated over 2T steps double the synaptic operations
    s = (torch.rand(2, 2, *model_layers(m2)[1].in_shape) < 0.2).float()
    assert count_layer(model_layers(m2)[1], torch.cat([s, s])).synops == \
        2 * count_layer(model_layers(m2)[1], s).synops


def test_layer_counts_add():
    a = LayerCounts(samples=1, synops=3, active=1, neuron_updates=4)
    b = LayerCounts(samples=2, synops=5, active=0, neuron_updates=4)
    assert (a + b) == LayerCounts(samples=3, synops=8, active=1, neuron_updates=8)
    assert (a + b).firing_rate == 1 / 8


# ------------------------------------------------------------------ constants

def test_constants_file_and_overrides(tmp_path):
    assert load_constants().mac_pj == 4.6
    f = tmp_path / "c.toml"
    f.write_text("ac_pj = 0.03\nloihi_synop_pj = 10\n")
    c = load_constants(f, ["mac_pj=1.5"])
    assert (c.ac_pj, c.loihi_synop_pj, c.mac_pj) == (0.03, 10.0, 1.5)
    j = tmp_path / "c.json"
    j.write_text('{"ac_pj": 0.5}')
    assert load_constants(j).ac_pj == 0.5
    for text in ("ac_pj = [", "nope = 1", "ac_pj = -1", 'ac_pj = "x"'):
        f.write_text(text)
        with pytest.raises(ConstantsError):
            load_constants(f)
    with pytest.raises(ConstantsError):
        load_constants(None, ["ac_pj"])


# ------------------------------------------------------------------------ CLI

def _ckpt(path, m):
    from spikediff.checkpoint import Checkpoint, atomic_save
    atomic_save(Checkpoint(config=m.config.to_dict(),
                           data={"name": "mnist", "channels": 1, "image_size": 28},
                           vq=m.vq.state_dict(), denoiser=m.denoiser.state_dict()), path)


def test_cli_report_json_and_plot(tmp_path, tiny_mnist, capsys):
    ck = tmp_path / "m.pt"
    _ckpt(ck, tiny_model())
    out, png = tmp_path / "e.json", tmp_path / "e.png"
    rc = main(["report", "--checkpoint", str(ck), "--n", "3", "--steps", "2", "--verify",
               "--data-root", str(tiny_mnist), "--json", str(out), "--plot", str(png),
               "--no-progress", "--set", "ac_pj=0", "--set", "neuron_update_45nm_pj=0"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    assert rep["meta"]["encoder_input"] == "3 real test images"
    assert rep["brute_force_check"]["all_agree"]
    assert rep["constants"]["ac_pj"] == 0
    tot = rep["per_generated_image"]
    # ACs and neuron updates free: only the analog-fed layers' MACs are left
    assert tot["snn_45nm_pj"] == pytest.approx(tot["macs"] * 4.6)
    assert set(rep["components"]) == {"encoder", "spike_generator", "decoder", "denoiser_call",
                                      "denoiser"}
    assert rep["components"]["denoiser"]["calls_per_image"] == 2
    for r in rep["layers"]:
        assert r["firing_rate"] is None or 0 <= r["firing_rate"] <= 1
    assert "Per component" in text and "Host-side operations" in text and "loihi_mac_pj" in text
    # the report ends with the headline: both ratios, as the JSON has them
    last = [line for line in text.strip().splitlines() if not line.startswith("wrote ")][-1]
    assert last.startswith("Headline, per generated image: ANN/SNN at 45 nm = ")
    assert f"ANN(45 nm)/SNN(Loihi) = {tot['ann_over_loihi']:.2f}x" in last
    # existing output without --force
    rc = main(["report", "--checkpoint", str(ck), "--n", "1", "--steps", "1",
               "--json", str(out), "--no-progress"])
    assert rc == 2 and "--force" in capsys.readouterr().err


def test_cli_random_weights_without_data_falls_back(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPIKEDIFF_DATA_ROOT", raising=False)
    rc = main(["report", "--random-weights", "tiny", "--n", "2", "--steps", "1", "--no-progress",
               "--hardware", "loihi"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "RANDOM" in text and "generated images instead of real test images" in text
    assert "SNN 45nm" not in text.split("Per component")[1].split("\n")[1]
    # refinement steps on the command line are counted as denoiser calls
    js = tmp_path / "refined.json"
    assert main(["report", "--random-weights", "tiny", "--n", "2", "--steps", "1",
                 "--refine-steps", "3", "--no-progress", "--quiet", "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    assert rep["meta"]["refine_steps"] == 3
    assert rep["components"]["denoiser"]["calls_per_image"] == 1 + 3


@pytest.mark.parametrize("case", ["missing", "corrupt", "constants", "unwritable", "lava", "stage1"])
def test_cli_errors(tmp_path, capsys, monkeypatch, case):
    args = ["report", "--n", "1", "--steps", "1", "--no-progress"]
    if case == "missing":
        args += ["--checkpoint", str(tmp_path / "nope.pt")]
    elif case == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
        args += ["--checkpoint", str(tmp_path / "bad.pt")]
    elif case == "constants":
        (tmp_path / "c.toml").write_text("ac_pj = = 3")
        args += ["--random-weights", "tiny", "--constants", str(tmp_path / "c.toml")]
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        args += ["--random-weights", "tiny", "--json", str(tmp_path / "file" / "out.json")]
    elif case == "lava":
        monkeypatch.setenv("SPIKEDIFF_LAVA_PY", str(tmp_path / "no-python"))
        args += ["--random-weights", "tiny", "--backend", "lava"]
    elif case == "stage1":
        from spikediff.checkpoint import Checkpoint, atomic_save
        m = tiny_model(lively=False)
        atomic_save(Checkpoint(config=m.config.to_dict(),
                               data={"name": "mnist", "channels": 1, "image_size": 28},
                               vq=m.vq.state_dict()), tmp_path / "s1.pt")
        args += ["--checkpoint", str(tmp_path / "s1.pt")]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    if case == "lava":
        assert "lava" in err[0].lower()


def test_random_weights_is_the_same_model_as_in_spikediff_run():
    """--random-weights PRESET means one thing: spikediff-energy counts the model
    spikediff-run runs (every layer firing), not a differently drawn one."""
    import argparse

    from hardware.energy.cli import load_model_and_data
    from hardware.run import load_model

    a = argparse.Namespace(random_weights="tiny", seed=1, checkpoint=None, dataset=None)
    energy_model, meta, _ = load_model_and_data(a)
    run_model, _ = load_model(a)
    for part in ("vq", "denoiser"):
        got, want = (getattr(m, part).state_dict() for m in (energy_model, run_model))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), part
    assert meta["weights"].startswith("RANDOM")
