"""Quantization-aware training for one 8-bit weight per synapse on Loihi
(``[train] quantize = "loihi8"``).

Every synapse the NIR export writes (a folded conv: weight times the batch
norm's scale; the denoiser's first layer and the spike generator with their
embeddings / codebook composed in; the denoiser head's two halves; the image
read-out) becomes one link of the Lava mapping, whose weights it writes as
8-bit mantissas with one shared power-of-two exponent (export.fixed_point:
mantissas, its exponent rule and rounding; mixed sign: even mantissas). The
mapping multiplies a link by its target's gain g (dt/tau of the LIF, 1/T of
the head's mean, the read-out's PSP gain) and a power-of-two population scale,
which does not move the grid; so training rounds g*E onto the grid
:func:`export.fixed_point.fake_quant_grid` gives for max |g*E| and divides by g
again, with a straight-through gradient (the rounding's gradient taken as 1).

With it on, the batch norms use their running statistics (frozen: the folded
weight the chip holds is weight * running scale), and the forward computes
each layer's current with the quantized folded weight: the model trains and
samples as the chip's weights are. The export then rounds the written graph
onto the same grid (:func:`export.loihi8.quantize_graph`: exact there, in
float64; training's float32 can differ on a tie), so the graph fits one 8-bit
weight per synapse and the Lava mapping and the emulator run it unsplit.
Biases (13-bit mantissas on the chip) and thresholds (1.0 times a power of
two: exact) are not rounded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .neuron import DT, TAU_MEM

QUANTIZE_MODES = ("", "loihi8")
LIF_GAIN = DT / TAU_MEM    # the mapping's weight gain into the model's LIF (r dt / tau)
WEIGHT_MAX, WEIGHT_MAX_MIXED = 255, 254


def fake_quant_grid(w_abs_max: float, mixed: bool) -> tuple[float, float]:
    """export.fixed_point.fake_quant_grid, restated: spikediff is the layer export
    and hardware build on (it imports neither), and the Lava worker cannot
    import spikediff. tests/test_qat.py holds the two equal."""
    lim = float(WEIGHT_MAX_MIXED if mixed else WEIGHT_MAX)
    r = math.log2(w_abs_max / lim) if w_abs_max > 0 else 0.0
    e = int(round(r)) if abs(r - round(r)) < 1e-9 else math.ceil(r)
    return 2.0 ** e * (2.0 if mixed else 1.0), lim * 2.0 ** e


def fake_quant(w: torch.Tensor, gain: float) -> torch.Tensor:
    """w rounded so that gain * w lies on the mapping's 8-bit grid for this
    link, straight-through gradient."""
    with torch.no_grad():
        g = w.detach().double() * gain
        nz = g[g != 0]
        if nz.numel() == 0:
            return w
        step, _ = fake_quant_grid(float(nz.abs().max()), bool(nz.min() < 0 < nz.max()))
        q = (torch.round(g / step) * step / gain).to(w.dtype)
    return w + (q - w).detach()


def enabled(module) -> bool:
    return getattr(module, "quantize", "") == "loihi8"


def enable(model, mode: str) -> None:
    """Mark what generation runs (the denoiser, the VQ-SVAE's spike generator,
    decoder and read-out; not the encoder, whose codes the decoder stage trains
    on) for quantized forwards; mode "" turns it off."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}")
    model.vq.quantize = model.denoiser.quantize = mode
    for net in (model.denoiser, model.vq.spike_generator, model.vq.decoder):
        for m in net.modules():
            if hasattr(m, "synapse") and hasattr(m, "bn"):   # a layers.SpikingConv
                m.quantize = mode


def bn_affine(bn: nn.Module, n: int, like: torch.Tensor):
    """(scale, shift) of a batch norm with its running statistics, differentiable
    in its affine parameters (an nn.Identity: 1, 0)."""
    if isinstance(bn, nn.Identity):
        return torch.ones(n, dtype=like.dtype), torch.zeros(n, dtype=like.dtype)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def folded(layer):
    """(weight, bias) of a SpikingConv with its batch norm folded in (differentiable)."""
    conv = layer.synapse
    transposed = isinstance(conv, nn.ConvTranspose2d)
    cout = conv.out_channels
    scale, shift = bn_affine(layer.bn, cout, conv.weight)
    view = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    w = conv.weight * scale.view(view)
    b = conv.bias if conv.bias is not None else torch.zeros(cout, dtype=w.dtype)
    return w, b * scale + shift


def conv(synapse: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if isinstance(synapse, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, w, b, synapse.stride, synapse.padding,
                                  synapse.output_padding, synapse.groups, synapse.dilation)
    return F.conv2d(x, w, b, synapse.stride, synapse.padding, synapse.dilation, synapse.groups)


def layer_currents(layer, x: torch.Tensor) -> torch.Tensor:
    """A SpikingConv's synapse + frozen batch norm with the quantized folded weight."""
    w, b = folded(layer)
    return conv(layer.synapse, x, fake_quant(w, LIF_GAIN), b)


def denoiser_first_currents(den, one_hot: torch.Tensor) -> torch.Tensor:
    """The embedding denoiser's first layer as the export writes it: embeddings,
    conv and batch norm composed into one conv on the one-hot grid (fold.py),
    quantized, applied to that grid (denoiser.one_hot_input)."""
    w, b = folded(den.layers[0])
    E = torch.cat([den.token_embed.weight, den.time_embed.weight])        # [V, E]
    wc = fake_quant(torch.einsum("oekl,ve->ovkl", w, E), LIF_GAIN)
    return conv(den.layers[0].synapse, one_hot.to(w.dtype), wc, b)


def head(den, spikes) -> torch.Tensor:
    """The denoiser head over concat(last, first) as the export's two synapses
    into the mean over T (gain 1/T each), quantized separately."""
    c_last = spikes[-1].shape[2]
    W, b = den.head.weight, den.head.bias
    g = 1.0 / den.cfg.T
    last, first = spikes[-1].mean(0), spikes[0].mean(0)
    return (F.conv2d(last, fake_quant(W[:, :c_last], g), b, 1, 1)
            + F.conv2d(first, fake_quant(W[:, c_last:], g), None, 1, 1))


def spike_generator_currents(vq, idx: torch.Tensor) -> torch.Tensor:
    """The spike generator's 1x1 synapse with the codebook composed in (one
    weight per (code, channel), as the export writes it), quantized, for code
    grids idx [B, H, W] -> [B, D, H, W]."""
    sg = vq.spike_generator
    w, b = folded(sg)                                                     # [D, D, 1, 1]
    emb = vq.codebook.embedding.detach()                                  # [K, D]
    wc = fake_quant(torch.einsum("od,cd->oc", w[:, :, 0, 0], emb), LIF_GAIN)   # [D, K]
    return (F.embedding(idx, wc.t()) + b).permute(0, 3, 1, 2)


def readout(vq, spikes_folded: torch.Tensor) -> torch.Tensor:
    """The image read-out synapse, quantized with the PSP read-out's gain."""
    r = vq.readout   # into an LI of decay d: r = 1/(1-d), dt/tau = 1-d, so the gain is 1
    return conv(r, spikes_folded, fake_quant(r.weight, 1.0), r.bias)
