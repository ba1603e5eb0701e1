import subprocess
import sys

import torch

from spikediff.neuron import (DT, LIF, TAU_MEM, IFParameters, IParameters, LIParameters,
                              LIFParameters, i_step, if_step, li_step, lif_step, per_step, psp,
                              synaptic_filter)


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
    # x = 2: v = 1.0 exactly is not above threshold; 1.5 next step is.
    assert LIF()(torch.full((4, 1), 2.0)).flatten().tolist() == [0, 1, 0, 1]


def test_surrogate_gradient_flows():
    # One step from rest: z = H(v - 1), v = x / 2, so dz/dx = 1/2 * SuperSpike'(v - 1),
    # SuperSpike'(u) = 1 / (|u| + 1)^2 (the bump the reference's arctan surrogate has).
    x = torch.tensor([[-3.0, 0.5, 1.9, 2.0, 2.2, 4.0]], dtype=torch.float64, requires_grad=True)
    LIF()(x).sum().backward()
    v = x.detach() / 2
    assert torch.allclose(x.grad, 0.5 / ((v - 1).abs() + 1) ** 2)
    # and through time: a spike at the last of T steps has gradient into earlier currents
    x = torch.full((3, 1), 1.6, requires_grad=True)
    LIF()(x)[-1].sum().backward()
    assert (x.grad[:-1].abs() > 0).all()


def test_step_functions_follow_their_equations():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g,
                                                                          dtype=torch.float64)
    leak, gain = per_step(4e-3, 3.0, DT, torch.float64)
    assert float(leak) == 0.25 and float(gain) == 3e-3
    li = li_step(x, v, LIParameters(0.25, 2.0, 0.5))
    assert torch.allclose(li, v + 0.25 * (2 * x + 0.5 - v))
    assert torch.equal(i_step(x, v, IParameters(0.5)), v + 0.5 * x)
    z, v1 = lif_step(x, v, LIFParameters(0.25, 2.0, 0.5, v_th=0.3, v_reset=-1.0))
    assert torch.equal(z, (li > 0.3).double()) and 0 < z.mean() < 1
    assert torch.equal(v1, torch.where(li > 0.3, torch.tensor(-1.0, dtype=torch.float64), li))
    z, v2 = if_step(x, v, IFParameters(0.5, v_th=0.2, v_reset=0.1))
    iv = v + 0.5 * x
    assert torch.equal(z, (iv > 0.2).double())
    assert torch.equal(v2, torch.where(iv > 0.2, torch.tensor(0.1, dtype=torch.float64), iv))
    # the default LIF parameters are the model's neuron (tau = 2 dt)
    assert LIFParameters().leak == DT / TAU_MEM == 0.5


def test_import_leaves_warning_filters_alone():
    code = ("import warnings, torch; before = list(warnings.filters); "
            "import spikediff.neuron; assert warnings.filters == before, "
            "[f for f in warnings.filters if f not in before]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.jit.script" not in r.stderr  # and Norse's own warning stays silenced


def test_psp_and_filter():
    s = torch.tensor([1.0, 0.0, 1.0])
    assert torch.isclose(psp(s, 0.8), torch.tensor(0.8 ** 2 + 1.0))
    assert synaptic_filter(s).tolist() == [0.5, 0.25, 0.625]


def test_lif_without_gradient_is_norses_step_bit_for_bit():
    """neuron.lif_sequence_no_grad (inference) against Norse's step, with exact
    ties at the threshold and a negative zero among the currents."""
    from spikediff.neuron import (LIFBoxFeedForwardState, lif_box_feed_forward_step,
                                  lif_parameters, lif_sequence_no_grad)
    p = lif_parameters()
    x = torch.randn(16, 4, 64, 5, generator=torch.Generator().manual_seed(0)) * 1.5
    x[:, :2] = torch.round(x[:, :2] * 4) / 4
    x[3, 0, 0, 0] = -0.0
    state, ref = LIFBoxFeedForwardState(v=torch.zeros_like(x[0])), []
    for xt in x:
        z, state = lif_box_feed_forward_step(xt, state, p, dt=DT)
        ref.append(z)
    ref = torch.stack(ref)
    assert torch.equal(lif_sequence_no_grad(x, p), ref)
    with torch.no_grad():
        assert torch.equal(LIF()(x), ref)
    assert 0 < ref.mean() < 1
