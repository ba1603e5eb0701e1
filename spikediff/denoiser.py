"""SDID: the spiking denoiser of absorbing diffusion over the code grid.

Input options (DenoiserConfig.token_input):
- "raw" (as published): token ids and t as two float channels on the grid;
- "embed": the one-hot token grid (K+1 channels incl. the mask) and a one-hot
  t, each through a learned 1x1 synapse (an embedding), summed.
Either way the result is an analog current, repeated over T, into a stack of
Conv3x3 + BN + LIF layers. A final Conv3x3 over concat(last, first) gives K
logits per step, averaged over T (host-side readout). The head is linear, so
here it is applied once to the spikes' mean over T: the same logits (to float
rounding) for a quarter of the head's work at T = 4, where the K-channel head
was over half of the network's multiply-adds. The exported graph keeps the
per-step form a chip runs (export/nir_graph.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import DenoiserConfig
from .layers import SpikingConv, conv3x3


class SpikingDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, codebook_size: int, diffusion_steps: int):
        super().__init__()
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.mask_id = codebook_size
        self.diffusion_steps = diffusion_steps
        if cfg.token_input == "raw":
            cin = 2
        elif cfg.token_input == "embed":
            cin = cfg.embed_dim
            self.token_embed = nn.Embedding(codebook_size + 1, cin)
            self.time_embed = nn.Embedding(diffusion_steps + 1, cin)
        else:
            raise ValueError(f"unknown token_input {cfg.token_input!r}")
        ch = [cin, *cfg.channels]
        self.layers = nn.ModuleList(SpikingConv(conv3x3(a, b), b) for a, b in zip(ch, ch[1:]))
        self.head = conv3x3(ch[-1] + ch[1], codebook_size)
        # The head's spike input [T, B, C, H, W], as a module so that hooks
        # (the energy counter) see the spikes, not their mean.
        self.head_input = nn.Identity()

    def input_current(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Analog input [B, C, H, W] for token grids [B, H, W] and steps t [B]."""
        if self.cfg.token_input == "raw":
            tt = t.to(torch.float32).view(-1, 1, 1).expand(tokens.shape)
            return torch.stack([tokens.to(torch.float32), tt], 1)
        x = self.token_embed(tokens) + self.time_embed(t).view(-1, 1, 1, self.cfg.embed_dim)
        return x.permute(0, 3, 1, 2)

    def spikes(self, tokens: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains [T, B, C, H, W] of every layer."""
        out = [self.layers[0].forward_static(self.input_current(tokens, t), self.cfg.T)]
        for layer in self.layers[1:]:
            out.append(layer(out[-1]))
        return out

    def readout(self, spikes: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.head_input(torch.cat([spikes[-1], spikes[0]], 2)).mean(0))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] over the clean token at each position."""
        return self.readout(self.spikes(tokens, t))
