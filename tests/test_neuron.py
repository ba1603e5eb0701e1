import torch

from spikediff.neuron import LIF, psp, synaptic_filter


def reference_lif(x):
    """SPEC: v <- v + (x - v) / 2, spike when v > 1, hard reset to 0."""
    v = torch.zeros_like(x[0])
    out = []
    for xt in x:
        v = v + (xt - v) / 2
        s = (v > 1).float()
        v = v * (1 - s)
        out.append(s)
    return torch.stack(out)


def test_lif_matches_update_equation_step_by_step():
    x = torch.randn(16, 3, 50) * 2 + 1
    spikes = LIF()(x)
    assert torch.equal(spikes, reference_lif(x))
    assert 0 < spikes.mean() < 1  # the check above is not vacuous


def test_constant_drive_fires_periodically():
    # x = 3: v = 1.5 after one step -> spike, reset, repeat: every step fires.
    assert LIF()(torch.full((4, 1), 3.0)).flatten().tolist() == [1, 1, 1, 1]
    # x = 1.6: v = 0.8, 1.2 -> spike every second step.
    assert LIF()(torch.full((4, 1), 1.6)).flatten().tolist() == [0, 1, 0, 1]


def test_surrogate_gradient_flows():
    x = (torch.randn(8, 10) + 1).requires_grad_()
    LIF()(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_psp_and_filter():
    s = torch.tensor([1.0, 0.0, 1.0])
    assert torch.isclose(psp(s, 0.8), torch.tensor(0.8 ** 2 + 1.0))
    assert synaptic_filter(s).tolist() == [0.5, 0.25, 0.625]
