"""The VQ stage's optional adversarial loss: its pieces, and training with it."""
import pytest
import torch

from spikediff import checkpoint
from spikediff.adversarial import Adversary, adaptive_weight, discriminator_loss
from spikediff.cli import main
from spikediff.config import ConfigError, load_config
from spikediff.train import train


def test_hinge_loss_is_zero_only_beyond_the_margins():
    big = torch.full((4, 1, 3, 3), 2.0)
    assert discriminator_loss(big, -big) == 0
    assert torch.isclose(discriminator_loss(torch.zeros(4, 1), torch.zeros(4, 1)), torch.tensor(1.0))
    # a fooled discriminator (fakes scored real) pays on the fake side only
    assert torch.isclose(discriminator_loss(big, big), torch.tensor(1.5))


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(5, 3)
    rec = (x @ w).pow(2).mean()
    adv = -(x @ w).sum() * 0.01
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0]
    got = adaptive_weight(rec, adv, w)
    assert torch.isclose(got, g_rec.norm() / (g_adv.norm() + 1e-4))
    assert not got.requires_grad


def test_adversary_waits_for_its_start_then_trains_the_discriminator():
    torch.manual_seed(0)
    last = torch.nn.Conv2d(2, 1, 1)
    fake = last(torch.randn(4, 2, 8, 8))
    out = {"loss": fake.pow(2).mean(), "output": fake}
    adv = Adversary(1, weight=0.5, start=10, lr=1e-3, seed=0)
    assert adv.generator_terms(out, torch.rand(4, 1, 8, 8), last.weight, step=9) is out
    assert adv.update() == {}  # nothing to learn from before the start
    before = [p.clone() for p in adv.net.parameters()]
    got = adv.generator_terms(out, torch.rand(4, 1, 8, 8), last.weight, step=10)
    assert set(got) >= {"adversarial", "adversarial_scale"}
    assert not torch.equal(got["loss"], out["loss"])
    got["loss"].backward()
    assert last.weight.grad is not None
    assert "discriminator" in adv.update()
    assert any(not torch.equal(a, b) for a, b in zip(before, adv.net.parameters()))


def test_training_with_it_resumes_exactly_and_keeps_it_out_of_the_model(tiny_mnist, tmp_path,
                                                                         capsys):
    def cfg(epochs_vq):
        c = load_config("tiny")
        c.train.epochs_vq, c.train.epochs_denoiser = epochs_vq, 1
        c.train.adversarial_weight, c.train.adversarial_start = 0.5, 3
        return c

    full = train(cfg(2), "mnist", tiny_mnist, tmp_path / "full", stages=("vq",), progress=False)
    state = checkpoint.load(full)
    assert state.discriminator is not None
    rows = state.history["vq"]
    assert rows[0]["adversarial_scale"] > 0 and rows[1]["discriminator"] > 0
    assert main(["info", "--checkpoint", str(full)]) == 0
    assert "adversarial term (weight 0.5, from VQ step 3)" in capsys.readouterr().out
    half = tmp_path / "half"
    train(cfg(1), "mnist", tiny_mnist, half, stages=("vq",), progress=False)
    s = checkpoint.load(half / "checkpoint.pt")
    s.config["train"]["epochs_vq"] = 2  # as if killed after epoch 1
    checkpoint.atomic_save(s, half / "checkpoint.pt")
    train(None, None, tiny_mnist, half, stages=("vq",), resume=True, progress=False)
    resumed = checkpoint.load(half / "checkpoint.pt")
    for part in ("vq", "discriminator"):
        a, b = getattr(state, part), getattr(resumed, part)
        flat = a.get("net", a)
        for k, v in flat.items():
            assert torch.equal(v, b.get("net", b)[k]), f"{part}.{k} differs after resume"
    # the denoiser stage drops the discriminator: it is no part of the model
    train(None, None, tiny_mnist, half, resume=True, progress=False)
    done = checkpoint.load(half / "checkpoint.pt")
    assert done.stage == "done" and done.discriminator is None
    # without the term the run trains other weights; with it starting after the
    # last step, the very same ones
    plain = load_config("tiny")
    plain.train.epochs_vq = 2
    p = checkpoint.load(train(plain, "mnist", tiny_mnist, tmp_path / "plain", stages=("vq",),
                              progress=False)).vq
    assert not torch.equal(p["readout.weight"], state.vq["readout.weight"])
    late = cfg(2)
    late.train.adversarial_start = 10_000
    q = checkpoint.load(train(late, "mnist", tiny_mnist, tmp_path / "late", stages=("vq",),
                              progress=False)).vq
    assert all(torch.equal(v, q[k]) for k, v in p.items())


def test_bad_settings_are_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nadversarial_weight = -1.0\n")
    with pytest.raises(ConfigError, match="adversarial_weight"):
        load_config("tiny", f)
