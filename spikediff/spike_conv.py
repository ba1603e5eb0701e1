"""Inference convolutions of binary spikes in integer arithmetic (CPU, oneDNN int8).

A conv whose input is 0/1 spikes adds up weights: with the weights written as
integers, the sums are exact integers. Each float32 weight of output channel c
is written as M * 2^-k_c, M an integer of at most 31 bits (k_c chosen from the
channel's largest weight), and M in four balanced base-256 digits
d_0..d_3 in [-128, 127]: w = 2^-k_c * sum_i d_i 256^i. One int8 convolution
(oneDNN's, with AMX or VNNI where the CPU has them) computes the four digit
planes' sums as int32, exactly, each scaled by its power of two (exact) into
float32; the float32 result is their sum plus the bias: three roundings
instead of one per term of a float32 conv, and each weight's rounding to
31 bits (2^-32 of its channel's largest weight) is far below float32's. So
the currents equal the float32 conv's to float rounding; on a CPU with AMX
this conv is ~15x faster per plane, ~4x for the four. Without AMX (AMD Zen 4:
AVX-512 VNNI) the four planes cost more than one float32 conv: sampling 0.83x.

Used only where it cannot change training: no gradient wanted (inference or
torch.no_grad), a CPU tensor, a plain Conv2d, float32. Anything else, or a
torch without the oneDNN ops, takes the float32 conv.

OFF by default (SPIKEDIFF_SPIKE_CONV=1 turns it on): equal currents to float
rounding are not equal spikes. A current within float rounding of the
threshold can fire on one side and not the other, and one flipped spike
changes the layers after it; on the random `paper` denoiser (T = 16) ~0.01 %
of the last layers' spikes differ and logits move by up to ~4 % of their
range. The float32 path itself is batch-invariant, so this is a numerics
change: it becomes the default only after FID shows samples unchanged
(docs/experiments.md).
"""
from __future__ import annotations

import os

import torch
from torch import nn

DIGITS = 4


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    return (type(conv) is nn.Conv2d and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and conv.groups == 1
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros"
            and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
            and _AVAILABLE)


def digit_planes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DIGITS int8 digit planes [C_out, ...] and float32 scales [C_out] with
    w[c] ~= sum_i digits[i][c] * scales[i][c] (to 2^-31 of max |w[c]|)."""
    w = w.detach().double()
    cout = w.shape[0]
    top = w.abs().flatten(1).amax(1).clamp(min=torch.finfo(torch.float32).tiny)
    # 2^k_c * max|w_c| in [2^29, 2^30): |M| < 2^30, within four balanced digits' range
    k = 29 - torch.floor(torch.log2(top))
    m = torch.round(w * torch.exp2(k).view(-1, *[1] * (w.dim() - 1))).long()
    digits, scales = [], []
    for i in range(DIGITS):
        d = torch.remainder(m + 128, 256) - 128
        m = (m - d) // 256
        digits.append(d.to(torch.int8))
        scales.append(torch.exp2(8 * i - k))
    assert not m.any(), "weights beyond the digits"
    return digits, [sc.float() for sc in scales]


class _Packed:
    def __init__(self, conv: nn.Conv2d, shape):
        digits, self.scales = digit_planes(conv.weight)
        self.key = _key(conv, shape)
        self.zero_points = torch.zeros(conv.out_channels, dtype=torch.int64)
        self.args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        # one conv per digit plane: oneDNN runs one with DIGITS times the
        # output channels several times slower than DIGITS separate ones
        self.weights = [torch.ops.onednn.qconv_prepack(
            d.contiguous(memory_format=torch.channels_last), sc, 1.0, 0, *self.args, tuple(shape))
            for d, sc in zip(digits, self.scales)]
        self.bias = None if conv.bias is None else conv.bias.detach().clone()


def _key(conv: nn.Conv2d, shape):
    b = conv.bias
    return (conv.weight.data_ptr(), conv.weight._version,
            None if b is None else (b.data_ptr(), b._version), tuple(shape[1:]))


def spike_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for 0/1 spikes x [N, C, H, W] (see the module's docstring)."""
    packed = getattr(conv, "_spike_conv_packed", None)
    if packed is None or packed.key != _key(conv, x.shape):
        packed = _Packed(conv, x.shape)
        conv._spike_conv_packed = packed  # a plain attribute: not in the state dict
    a = x.to(memory_format=torch.channels_last, dtype=torch.uint8)
    y = None
    for w, sc in zip(packed.weights, packed.scales):  # the smallest digit first
        plane = torch.ops.onednn.qconv2d_pointwise(
            a, 1.0, 0, w, sc, packed.zero_points, None, *packed.args,
            1.0, 0, torch.float32, "none", [], "")
        y = plane if y is None else y.add_(plane)
    if packed.bias is not None:
        y = y.add_(packed.bias.view(1, -1, 1, 1))
    return y


def _probe() -> bool:
    if not (os.environ.get("SPIKEDIFF_SPIKE_CONV", "0") == "1" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qconv2d_pointwise")):
        return False
    try:
        conv = nn.Conv2d(3, 4, 3, padding=1)
        x = (torch.rand(2, 3, 5, 5) < 0.5).float()
        with torch.no_grad():
            return bool(torch.allclose(spike_conv(conv, x), conv(x), atol=1e-5))
    except Exception:  # noqa: BLE001 - no usable int8 conv here: the float32 conv it is
        return False


_AVAILABLE = _probe()


def tag() -> str:
    """For cache keys of sampled tokens and images: draws made with the int8 path
    may differ from the float32 path's (near-threshold spikes), so they are kept apart."""
    return "-spikeconv" if _AVAILABLE else ""
