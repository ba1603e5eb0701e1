"""Synapse folding: linear maps in front of a synapse, composed into it.

Training keeps the factored form (embeddings, conv, batch norm), which is how
the parameters are learned; inference (sampling, NIR export, Lava, the energy
counter) runs the folded form, which is how a chip runs it.

- ``bn_fold``: an eval-mode batch norm as a per-channel (scale, shift).
- ``fold_denoiser``: the embedding denoiser's token and time embeddings, its
  first 3x3 conv and that conv's batch norm as one Conv2d on the one-hot
  spike grid [K+1 + N+1, H, W] (two spikes per position and step: the
  position's token and the step t). Exact: an embedding is a 1x1 synapse on a
  one-hot input with no bias, so the embedded map is zero wherever the one-hot
  grid is zero, and the conv's zero padding of the one was the zero padding of
  the other; conv(E x) = (W o E) x is a composition of linear maps. Composed
  in float64, then stored in the model's dtype. The first layer is then driven
  by binary spikes and costs accumulates, not multiply-accumulates.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import SpikediffError


def bn_fold(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift, eval-mode statistics, float64.
    An nn.Identity (a batch norm already folded away) is (1, 0)."""
    if isinstance(bn, nn.Identity):
        return torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    if not isinstance(bn, nn.BatchNorm2d):
        raise SpikediffError(f"cannot fold {type(bn).__name__}: only BatchNorm2d is supported")
    if bn.running_mean is None or bn.running_var is None:
        raise SpikediffError("batch norm without running statistics cannot be folded "
                             "(track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def folded_conv(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in float64 of a SpikingConv's Conv2d with its batch norm folded in."""
    conv = layer.synapse
    scale, shift = bn_fold(layer.bn)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(
        conv.out_channels, dtype=torch.float64)
    return w, b * scale + shift


def spike_input_weights(den) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [C, K+1 + N+1, kh, kw], bias [C]) in float64: embeddings, first
    conv and its batch norm of an embedding denoiser, as one conv on the one-hot grid."""
    w, b = folded_conv(den.layers[0])                                  # [C, E, kh, kw]
    E = torch.cat([den.token_embed.weight, den.time_embed.weight]).detach().double()  # [V, E]
    return torch.einsum("oekl,ve->ovkl", w, E), b


def fold_denoiser(den):
    """The inference form of a trained denoiser: an embedding denoiser's input
    (embeddings + first conv + batch norm) as one spike-fed conv, in eval mode.
    A "raw" denoiser (analog token ids, as published) has nothing to fold and
    is returned as it is; so is one folded already."""
    if den.cfg.token_input != "embed" or den.spike_input:
        return den.eval()
    from .layers import SpikingConv
    first = den.layers[0].synapse
    w, b = spike_input_weights(den)
    dtype = first.weight.dtype
    conv = nn.Conv2d(w.shape[1], w.shape[0], first.kernel_size, stride=first.stride,
                     padding=first.padding, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(w.to(dtype))
        conv.bias.copy_(b.to(dtype))
    layer = SpikingConv(conv, w.shape[0])
    layer.bn = nn.Identity()  # folded into conv
    out = copy.deepcopy(den)
    out.layers[0] = layer
    del out.token_embed, out.time_embed
    out.spike_input = True
    return out.to(first.weight.device).eval()
