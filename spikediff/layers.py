"""Synapse + batch norm + LIF, run over all time steps at once.

Convolutions see time folded into the batch ([T*B, C, H, W]), so each layer is
one large call; only the LIF loops over T. A layer fed the same analog input
at every step (image currents, code vectors) computes its synapse once and
repeats the result, which is what the repeated input would give.
"""
from __future__ import annotations

import torch
from torch import nn

from . import spike_conv
from .neuron import LIF


def fold_time(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_time(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


class SpikingConv(nn.Module):
    """conv (or transposed conv) -> BatchNorm2d -> LIF."""

    def __init__(self, synapse: nn.Module, out_channels: int):
        super().__init__()
        self.synapse = synapse
        self.bn = nn.BatchNorm2d(out_channels)
        self.lif = LIF()

    def synapse_bn(self, x: torch.Tensor, spikes: bool = False) -> torch.Tensor:
        """synapse + batch norm of [N, C, H, W]; quantization-aware (qat.py): the
        folded, 8-bit-rounded weight with frozen statistics. spikes: x is 0/1,
        so inference may add up its weights in integers (spike_conv.py)."""
        if getattr(self, "quantize", ""):
            from .qat import layer_currents
            return layer_currents(self, x)
        if spikes and spike_conv.applies(self.synapse, x):
            return self.bn(spike_conv.spike_conv(self.synapse, x))
        return self.bn(self.synapse(x))

    def currents(self, x: torch.Tensor) -> torch.Tensor:
        """Input [T, B, ...] spikes -> [T, B, ...] currents into the neurons."""
        return unfold_time(self.synapse_bn(fold_time(x), spikes=True), x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.currents(x))

    def forward_static(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Input [B, ...] repeated at each of T steps."""
        return self.static_lif(self.synapse_bn(x), T)

    def static_lif(self, y: torch.Tensor, T: int) -> torch.Tensor:
        return self.lif(y.unsqueeze(0).expand(T, *y.shape))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def up3x3(cin: int, cout: int) -> nn.ConvTranspose2d:
    """Doubles height and width, as the reference decoder does."""
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
