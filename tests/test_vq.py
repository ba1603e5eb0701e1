import torch
import torch.nn.functional as F

from spikediff.config import load_config
from spikediff.vqsvae import VQSVAE, Codebook


def test_nearest_code_is_brute_force_argmin():
    cb = Codebook(32, 5, 0.25)
    z = torch.randn(3, 5, 4, 4)
    idx = cb.nearest(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    brute = torch.stack([((cb.embedding - f) ** 2).sum(1).argmin() for f in flat])
    assert torch.equal(idx.flatten(), brute)
    assert torch.equal(cb.lookup(idx).permute(0, 2, 3, 1).reshape(-1, 5), cb.embedding[brute])


def test_straight_through_gradient_and_losses():
    cb = Codebook(8, 3, 0.25)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    zq, idx, loss = cb(z)
    assert torch.allclose(zq, cb.lookup(idx), atol=1e-6)  # forward: the code vectors
    g = torch.randn_like(zq)
    (zq * g).sum().backward()
    assert torch.allclose(z.grad, g)  # backward: identity to the encoder
    expected = ((cb.lookup(idx) - z) ** 2).mean() * 1.25
    assert torch.isclose(loss, expected)


def test_dead_codes_restart_onto_features():
    cb = Codebook(8, 3, 0.25)
    with torch.no_grad():
        cb.embedding[:] = 100.0  # far from everything ...
        cb.embedding[0] = 0.0    # ... except code 0, which takes every feature
    cb.train()
    z = torch.randn(4, 3, 2, 2)
    cb(z)
    assert cb.restart_dead(z) == 7
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for code in cb.embedding[1:]:
        assert (flat == code).all(1).any()


def test_vqsvae_loss_terms_and_decode_path():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    vq = VQSVAE(cfg.vq, channels=3).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    # the loss is the sum of its reported terms, and recon is the normalised MSE of
    # the output against the images in [-1, 1]
    out = vq(x)
    assert torch.isclose(out["loss"], out["recon"] + out["codebook"] + out["align"])
    vq.data_variance.fill_(0.25)
    out = vq(x)
    assert torch.isclose(out["recon"], F.mse_loss(out["output"], x * 2 - 1) / 0.25)
    assert torch.equal(out["images"], (out["output"].detach() + 1) / 2)
    assert out["align"] > 0 and out["codebook"] > 0
    # every trained part gets a gradient: the encoder through the straight-through
    # estimator, the codebook and the spike generator through their own loss terms
    out["loss"].backward()
    for name, p in [("encoder", vq.encoder[0].synapse.weight), ("mix", vq.mix),
                    ("codebook", vq.codebook.embedding),
                    ("spike_generator", vq.spike_generator.synapse.weight),
                    ("decoder", vq.decoder[0].synapse.weight), ("readout", vq.readout.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # in eval mode the forward pass is encode -> nearest code -> decode
    vq.eval()
    with torch.no_grad():
        out = vq(x)
        codes = vq.encode(x)
        assert torch.equal(out["codes"], codes)
        assert torch.equal(codes, vq.codebook.nearest(vq.features(vq.encode_spikes(x)[-1])))
        assert torch.allclose(out["images"], vq.decode(codes), atol=1e-12)
        assert ((vq.decode(codes) >= 0) & (vq.decode(codes) <= 1)).all()
