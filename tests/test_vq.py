import torch

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


def test_vqsvae_shapes_and_loss_terms():
    cfg = load_config("tiny")
    vq = VQSVAE(cfg.vq, channels=3)
    x = torch.rand(4, 3, 32, 32)
    out = vq(x)
    assert out["images"].shape == x.shape
    assert out["codes"].shape == (4, 8, 8)
    out["loss"].backward()
    assert vq.encoder[0].synapse.weight.grad.abs().sum() > 0
    vq.eval()
    assert vq.decode(vq.encode(x)).shape == x.shape
