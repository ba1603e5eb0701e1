"""SDID: the spiking denoiser of absorbing diffusion over the code grid.

Input options (DenoiserConfig.token_input):
- "raw" (as published): token ids and t as two float channels on the grid,
  an analog current;
- "embed": the one-hot token grid (K+1 channels incl. the mask) and a one-hot
  t, each through a learned 1x1 synapse (an embedding), summed. That is how it
  trains; for inference (fold.fold_denoiser, applied when a checkpoint is
  loaded) the embeddings, the first conv and its batch norm are one conv on
  the one-hot grid itself: binary spikes, two per position and step.
The input, repeated over T, goes into a stack of Conv3x3 + BN + LIF layers.
A final Conv3x3 over concat(last, first) gives K logits per step, averaged
over T (host-side readout). The head is linear, so here it is applied once to
the spikes' mean over T: the same logits (to float rounding) for a quarter of
the head's work at T = 4, where the K-channel head was over half of the
network's multiply-adds. The exported graph keeps the
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
        # True in the inference form, whose first synapse takes one_hot_input (fold.py).
        self.spike_input = False

    def network_input(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the first synapse receives at every step, [B, C, H, W], for token
        grids [B, H, W] and steps t [B]: analog ids ("raw"), the embedded current
        ("embed", training form) or the one-hot spike grid (folded form)."""
        dtype = self.layers[0].synapse.weight.dtype
        if self.cfg.token_input == "raw":
            return raw_input(tokens, t, dtype)
        if self.spike_input:
            return one_hot_input(tokens, t, self.codebook_size, self.diffusion_steps, dtype)
        x = self.token_embed(tokens) + self.time_embed(t).view(-1, 1, 1, self.cfg.embed_dim)
        return x.permute(0, 3, 1, 2)

    def spikes(self, tokens: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains [T, B, C, H, W] of every layer."""
        if (getattr(self, "quantize", "") and self.cfg.token_input == "embed"
                and not self.spike_input):   # quantized as the export composes it (qat.py)
            from .qat import denoiser_first_currents
            x = one_hot_input(tokens, t, self.codebook_size, self.diffusion_steps,
                              self.layers[0].synapse.weight.dtype)
            out = [self.layers[0].static_lif(denoiser_first_currents(self, x), self.cfg.T)]
        else:
            out = [self.layers[0].forward_static(self.network_input(tokens, t), self.cfg.T)]
        for layer in self.layers[1:]:
            out.append(layer(out[-1]))
        return out

    def readout(self, spikes: list[torch.Tensor]) -> torch.Tensor:
        x = self.head_input(torch.cat([spikes[-1], spikes[0]], 2))
        if getattr(self, "quantize", ""):
            from .qat import head
            c = spikes[-1].shape[2]
            return head(self, [x[:, :, c:], x[:, :, :c]])
        return self.head(x.mean(0))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] over the clean token at each position."""
        return self.readout(self.spikes(tokens, t))


# The input current for token grids [B, H, W] and steps t [B], one function per
# form; export/nir_exec.py builds the NIR graph's input with the same ones.
def raw_input(tokens: torch.Tensor, t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[B, 2, H, W]: token id and diffusion step as analog values (the paper's input)."""
    tt = t.to(dtype).view(-1, 1, 1).expand(tokens.shape)
    return torch.stack([tokens.to(dtype), tt], 1)


def one_hot_input(tokens: torch.Tensor, t: torch.Tensor, K: int, N: int,
                  dtype=torch.float32) -> torch.Tensor:
    """[B, K+1 + N+1, H, W] 0/1 grid: channel tokens[b, y, x] (K = mask) and channel
    K+1 + t[b] are 1 at every position, all others 0."""
    B, H, W = tokens.shape
    tok = torch.nn.functional.one_hot(tokens, K + 1).permute(0, 3, 1, 2)
    tim = torch.nn.functional.one_hot(t, N + 1).view(B, N + 1, 1, 1).expand(B, N + 1, H, W)
    return torch.cat([tok, tim], 1).to(dtype)
