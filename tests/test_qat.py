"""Quantization-aware training for one 8-bit weight per synapse ([train] quantize = "loihi8").

What it must hold: the forward trains on the weights the Lava fixed-point
mapping will write (the exported graph then fits one 8-bit synapse on every
link, and the model's own float64 forward equals the exported graph's, spike
for spike), the gradient passes the rounding straight through, the checkpoint
records it and --resume continues it exactly; on Lava (fixed_pt, unsplit) the
model runs bit for bit as the emulator runs it.
"""
import numpy as np
import pytest
import torch

from export import fixed_point as fp
from hardware import backends as B
from spikediff import checkpoint, qat
from spikediff.cli import main
from spikediff.config import ConfigError, check
from spikediff.model import active_random_model
from spikediff.train import train

from test_train import tiny_cfg

needs_lava = pytest.mark.needs_lava


def qat_model():
    m = active_random_model("tiny", seed=0)
    m.config.train.quantize = "loihi8"
    qat.enable(m, "loihi8")
    return m


def test_training_grid_is_the_mappings():
    """spikediff.qat restates export.fixed_point's 8-bit grid (package layering):
    the same step and range for any largest weight, either sign mode."""
    rng = np.random.default_rng(0)
    vals = np.concatenate([10.0 ** rng.uniform(-6, 3, 500), 255.0 * 2.0 ** np.arange(-20, 5),
                           254.0 * 2.0 ** np.arange(-20, 5), 255.0 * 2.0 ** np.arange(-20, 5)
                           * (1 + 1e-13)])
    for v in vals:
        for mixed in (False, True):
            assert qat.fake_quant_grid(float(v), mixed) == fp.fake_quant_grid(float(v), mixed)


def test_fake_quant_on_grid_with_straight_through_gradient():
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    for gain in (0.5, 1 / 3):   # a non-dyadic gain (the head's 1/T) too
        q = qat.fake_quant(w, gain)
        assert fp.grid_error((q * gain).detach().numpy()) < fp.FIT_TOL
        assert not torch.equal(q.detach(), w.detach())
        g = torch.randn_like(w)
        (q * g).sum().backward()
        assert torch.equal(w.grad, g)
        w.grad = None


def test_export_fits_8bit_and_equals_the_quantized_forward(tmp_path):
    """Every denoiser and decoder link of the export fits one 8-bit synapse, and
    the model's quantized forward (float64) is the exported graph's, spike for spike."""
    from hardware.lava.worker.plan import load_graph, plan_graph
    from hardware.lava.worker.quantise import misfits
    m = qat_model()
    path = B.export_to(m, tmp_path / "q.nir")
    for sub in ("denoiser", "decoder"):
        g, dt, _ = load_graph(str(path), sub)
        assert misfits(plan_graph(g, dt)) == [], sub
    plain = B.export_to(active_random_model("tiny", seed=0), tmp_path / "p.nir")
    g, dt, _ = load_graph(str(plain), "denoiser")
    assert misfits(plan_graph(g, dt))   # without it, the same model does not fit
    _, _, par = B.generate(B.NirBackend(path), 2, grid=m.grid, mask_id=m.denoiser.mask_id,
                           diffusion_steps=m.diffusion_steps, steps=3, temperature=1.0, seed=3,
                           reference=B.NorseBackend(m))
    d = par.to_dict()
    assert d["all_spikes_identical"] and d["max_abs_logit_diff"] < 1e-9, par.format()
    assert all(r["spikes"] > 0 for r in d["layers"])


def test_config_refuses_unknown_mode():
    cfg = tiny_cfg(quantize="int4")
    with pytest.raises(ConfigError, match="train.quantize"):
        check(cfg)


def test_finetune_records_it_and_resume_continues_exactly(tiny_mnist, tmp_path):
    base = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist,
                 tmp_path / "base", progress=False)
    kw = dict(epochs_vq=1, epochs_denoiser=2, lr=1e-2, quantize="loihi8")
    full = train(tiny_cfg(**kw), "mnist", tiny_mnist, tmp_path / "full", finetune=base,
                 progress=False)
    state = checkpoint.load(full)
    assert state.config["train"]["quantize"] == "loihi8"
    # killed after one epoch, resumed: the same weights as the uninterrupted run
    half = tmp_path / "half"
    train(tiny_cfg(**dict(kw, epochs_denoiser=1)), "mnist", tiny_mnist, half, finetune=base,
          progress=False)
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(half), "--resume",
                 "--epochs-denoiser", "2", "--no-progress"]) == 0
    a, b = state.denoiser, checkpoint.load(half / "checkpoint.pt").denoiser
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the quantized forward is what trained: the plain fine-tune ends elsewhere
    plain = train(tiny_cfg(**dict(kw, quantize="")), "mnist", tiny_mnist, tmp_path / "plain",
                  finetune=base, progress=False)
    c = checkpoint.load(plain).denoiser
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    # the loaded checkpoint exports onto the 8-bit grid: the emulator runs it unsplit
    model = checkpoint.load_model(full)
    path = B.export_to(model, tmp_path / "ft.nir")
    B.check_fit(path)


def test_decoder_stage_finetune_resumes_exactly(tiny_mnist, tmp_path):
    """The decoder stage (spike generator with the codebook composed in, decoder,
    read-out) fine-tuned quantization-aware: resumed after one epoch, the same."""
    base = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist,
                 tmp_path / "base", progress=False)
    kw = dict(epochs_vq=1, epochs_denoiser=1, epochs_decoder=2, lr=1e-2, quantize="loihi8")
    full = train(tiny_cfg(**kw), "mnist", tiny_mnist, tmp_path / "full", finetune=base,
                 stages=("decoder",), progress=False)
    half = tmp_path / "half"
    train(tiny_cfg(**dict(kw, epochs_decoder=1)), "mnist", tiny_mnist, half, finetune=base,
          stages=("decoder",), progress=False)
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(half), "--resume",
                 "--epochs-decoder", "2", "--no-progress"]) == 0
    a, b = checkpoint.load(full).vq, checkpoint.load(half / "checkpoint.pt").vq
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = checkpoint.load(base).vq
    assert not torch.equal(a["readout.weight"], changed["readout.weight"])
    assert torch.equal(a["encoder.0.synapse.weight"], changed["encoder.0.synapse.weight"])


@needs_lava
def test_lava_unsplit_equals_the_emulator_bit_for_bit(tmp_path):
    """Lava fixed_pt with one 8-bit weight per synapse and the emulator: every
    layer's spikes at every denoiser call, the logits, tokens and images."""
    m = qat_model()
    path = B.export_to(m, tmp_path / "q.nir")
    with B.LavaBackend(path, "fixed_pt") as lava:
        imgs, toks, par = B.generate(lava, 2, grid=m.grid, mask_id=m.denoiser.mask_id,
                                     diffusion_steps=m.diffusion_steps, steps=3, temperature=1.0,
                                     seed=5, reference=B.EmulatorBackend(path))
    d = par.to_dict()
    assert d["all_spikes_identical"], par.format()
    assert d["max_abs_logit_diff"] == 0 and d["max_abs_image_diff"] == 0
    assert d["differing_proposals"] == 0
    assert len(d["layers"]) == 5 and all(r["spikes"] > 0 for r in d["layers"])


def test_energy_report_doubles_synaptic_ops_only_for_the_split():
    """Loihi synaptic energy: one 8-bit synapse per connection by default; the
    explicit split counts the split layers' synaptic operations twice; a
    loihi8 model's denoiser and decoder need one synapse either way."""
    from hardware.energy.constants import EnergyConstants
    from hardware.energy.counting import Recorder
    from hardware.energy.report import build_report
    reps = {}
    for name, m in (("plain", active_random_model("tiny", seed=0)), ("qat", qat_model())):
        m = m.inference()
        with Recorder(m) as rec:
            m.generate(1, steps=2, generator=torch.Generator().manual_seed(0))
        for w in ("single", "split"):
            reps[name, w] = {r["name"]: r for r in build_report(
                m, rec.tally, EnergyConstants(), {"n_generated": 1}, lava_weights=w)["layers"]}
    single, split = reps["plain", "single"], reps["plain", "split"]
    doubled = [n for n, r in split.items() if r["loihi_synapses_per_connection"] == 2]
    assert "denoiser.1" in doubled
    for n in doubled:
        assert single[n]["loihi_synapses_per_connection"] == 1
        assert split[n]["loihi_synops_pj"] == pytest.approx(2 * single[n]["loihi_synops_pj"])
    for w in ("single", "split"):
        assert all(r["loihi_synapses_per_connection"] == 1 for n, r in reps["qat", w].items()
                   if not n.startswith("encoder"))


def test_eval_samples_through_the_emulator(tiny_mnist, tmp_path, monkeypatch, capsys):
    """python -m hardware.fid (spikediff eval, samples drawn with Lava fixed_pt's
    arithmetic) on a loihi8 checkpoint: cached apart from the float model's."""
    import json
    from hardware.fid import main as fid_main
    from test_evaluate import TinyFeatures, save_scripted
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny_fid.pt"
    save_scripted(TinyFeatures(), weights)
    run = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1, quantize="loihi8"), "mnist", tiny_mnist,
                tmp_path / "run", progress=False)
    res = {}
    for name, entry in (("norse", lambda args: main(["eval", *args])), ("emulator", fid_main)):
        out = tmp_path / f"{name}.json"
        assert entry(["--checkpoint", str(run), "--dataset", "mnist", "--data-root",
                      str(tiny_mnist), "--n", "4", "--steps", "2", "--batch-size", "2",
                      "--fid-weights", str(weights), "--json", str(out), "--no-progress"]) == 0
        res[name] = json.loads(out.read_text())
    assert res["norse"]["backend"] == "norse"
    assert "emulator (single 8-bit weights, frozen scales)" in res["emulator"]["backend"]
    assert res["emulator"]["fid"]["value"] > 0
    assert res["emulator"]["fid"]["value"] != res["norse"]["fid"]["value"]
    assert "sampled on the Lava fixed_pt emulator" in capsys.readouterr().out


def test_energy_count_refuses_a_quantized_model_instead_of_counting_nothing():
    """The quantized forward bypasses the synapse modules the counting hooks
    watch; a report of 0 pJ would be silently wrong."""
    from hardware.energy.report import measure
    from spikediff.errors import SpikediffError
    from spikediff.model import active_random_model
    model = active_random_model("tiny", 0)
    qat.enable(model, "loihi8")
    with pytest.raises(SpikediffError, match="quantize"):
        measure(model, n=1, steps=1, progress=False)
