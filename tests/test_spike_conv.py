"""spike_conv (opt-in): binary-spike convolutions as exact int8 digit-plane sums."""
import os
import subprocess
import sys

import pytest
import torch

from spikediff import spike_conv


def test_digit_planes_rebuild_the_weights():
    w = torch.randn(6, 5, 3, 3) * torch.logspace(-4, 1, 6).view(-1, 1, 1, 1)
    digits, scales = spike_conv.digit_planes(w)
    rebuilt = sum(d.double() * s.double().view(-1, 1, 1, 1) for d, s in zip(digits, scales))
    top = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1).double()
    assert ((rebuilt - w.double()).abs() <= top * 2.0 ** -30).all()
    assert all(d.dtype == torch.int8 for d in digits)


def test_off_by_default():
    assert os.environ.get("SPIKEDIFF_SPIKE_CONV", "0") == "1" or not spike_conv._AVAILABLE


def test_currents_equal_the_float_conv_to_rounding_when_on():
    code = """
import torch
from spikediff import spike_conv
from spikediff.layers import SpikingConv, conv3x3
if not spike_conv._AVAILABLE:
    print("unavailable"); raise SystemExit
layer = SpikingConv(conv3x3(32, 48), 48).eval()
x = (torch.rand(4, 3, 32, 7, 7) < 0.3).float()
with torch.no_grad():
    fast = layer.currents(x)
    spike_conv._AVAILABLE = False
    ref = layer.currents(x)
err = (fast - ref).abs().max().item()
assert err <= 1e-5 * ref.abs().max().item(), err
x.requires_grad_(True)   # training: the float32 conv, whatever the setting
spike_conv._AVAILABLE = True
assert not spike_conv.applies(layer.synapse, x)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "SPIKEDIFF_SPIKE_CONV": "1"})
    assert out.returncode == 0, out.stderr
    if "unavailable" in out.stdout:
        pytest.skip("no oneDNN int8 convolution in this torch")
    assert "ok" in out.stdout


def test_eval_caches_keep_int8_draws_apart(monkeypatch):
    """Draws made with the int8 path may differ from float32 ones, so a cached
    float32 draw must not answer for an int8 run (or the reverse)."""
    import numpy as np
    from spikediff import evaluate
    from spikediff.config import Refinement, load_config
    from spikediff.model import build_model

    keys = []

    class Cache:
        def shared_get(self, key):
            keys.append(key)
            return {"tokens": np.zeros((1, 7, 7), dtype=np.int64)}

    model = build_model(load_config("tiny"), 1, 28).eval()
    for on in (False, True):
        monkeypatch.setattr(spike_conv, "_AVAILABLE", on)
        evaluate.sampled_images(Cache(), model, 1, 1.0, None, 0, 1, "cpu", False, Refinement())
    assert len(keys) == 2 and keys[0] != keys[1]
