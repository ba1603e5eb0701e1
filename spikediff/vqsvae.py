"""VQ-SVAE: spiking encoder, codebook, adaptive spike generator, spiking decoder.

Images enter as analog currents (pixels shifted to [-0.5, 0.5]) repeated over
T; the encoder's spikes are read out as `(1-a) * PSP + a * rate` and snapped
to the nearest code; the spike generator (ASG) turns codes back into spike
trains for the decoder, and is trained to mimic the encoder's spikes.
Host-side steps (not spiking): the nearest-code search and the decoder's final
PSP-weighted sum with tanh. Each is one function here (`image_current`,
`nearest_code`, `tanh_readout`, `to_unit`), which the model, the ONNX writer
and the NIR executor all call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VQConfig
from .layers import SpikingConv, conv3x3, fold_time, unfold_time, up3x3
from .neuron import psp, synaptic_filter


# -- host steps, shared with export/onnx_export.py and export/nir_exec.py ----------------
def image_current(images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the encoder's analog input current, in [-0.5, 0.5]."""
    return images01 - 0.5


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Code indices [B, H, W] nearest (L2) to features z [B, D, H, W]; codebook [K, D]."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    # |f|^2 - 2 f.e + |e|^2: one matrix product instead of a [N, K, D] difference
    d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)
    return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])


def tanh_readout(potential: torch.Tensor) -> torch.Tensor:
    """The decoder's read-out potential (PSP at the last step) -> image in [-1, 1]."""
    return torch.tanh(potential)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (the training target's range) -> [0, 1]."""
    return (images + 1) / 2


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int, commitment: float):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(size, dim).uniform_(-1 / size, 1 / size))
        self.commitment = commitment
        self.register_buffer("usage", torch.zeros(size))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices [B, H, W] nearest (L2) to features z [B, D, H, W]."""
        return nearest_code(z, self.embedding)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embedding[idx].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor):
        idx = self.nearest(z)
        zq = self.lookup(idx)
        loss = F.mse_loss(zq, z.detach()) + self.commitment * F.mse_loss(z, zq.detach())
        if self.training:
            self.usage += torch.bincount(idx.flatten(), minlength=self.usage.numel())
        # Straight-through: the decoder's gradient flows to the encoder unchanged.
        return z + (zq - z).detach(), idx, loss

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor) -> int:
        """Move codes unused since the last call onto random current features."""
        dead = (self.usage == 0).nonzero().flatten()
        if len(dead):
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(len(flat), (len(dead),), device=z.device)
            self.embedding[dead] = flat[pick]
        self.usage.zero_()
        return len(dead)


# The modules that turn codes into images; the rest (encoder, codebook, mix,
# data_variance) decides which code an image gets.
DECODING_SIDE = ("spike_generator", "decoder", "readout")


def decodes(key: str) -> bool:
    """Whether a VQ-SVAE state-dict entry belongs to the decoding side."""
    return key.split(".", 1)[0] in DECODING_SIDE


class VQSVAE(nn.Module):
    def __init__(self, cfg: VQConfig, channels: int = 1):
        super().__init__()
        self.cfg = cfg
        enc = [channels, *cfg.enc_channels]
        self.encoder = nn.ModuleList(
            SpikingConv(conv3x3(a, b, stride=2), b) for a, b in zip(enc, enc[1:]))
        self.encoder.append(SpikingConv(nn.Conv2d(enc[-1], cfg.code_dim, 1), cfg.code_dim))
        # The readout mix `a` of PSP and rate, learnable, starts at 0.5.
        self.mix = nn.Parameter(torch.tensor(0.5))
        self.codebook = Codebook(cfg.codebook_size, cfg.code_dim, cfg.commitment)
        self.spike_generator = SpikingConv(nn.Conv2d(cfg.code_dim, cfg.code_dim, 1), cfg.code_dim)
        dec = [cfg.code_dim, *cfg.dec_channels]
        self.decoder = nn.ModuleList(SpikingConv(up3x3(a, b), b) for a, b in zip(dec, dec[1:]))
        self.readout = nn.ConvTranspose2d(dec[-1], channels, 3, padding=1)
        self.register_buffer("data_variance", torch.tensor(1.0))

    # -- pieces, usable separately by export, energy and backends ------------
    def encode_spikes(self, images01: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains [T, B, C, H, W] of every encoder layer."""
        out = [self.encoder[0].forward_static(image_current(images01), self.cfg.T)]
        for layer in self.encoder[1:]:
            out.append(layer(out[-1]))
        return out

    def features(self, spikes: torch.Tensor) -> torch.Tensor:
        rate = spikes.mean(0)
        return (1 - self.mix) * psp(spikes, self.cfg.psp_decay) + self.mix * rate

    def generate_spikes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.spike_generator.forward_static(codes, self.cfg.T)

    def generate_spikes_idx(self, idx: torch.Tensor) -> torch.Tensor:
        """The spike generator on code grids [B, H, W] (the codebook fixed);
        quantization-aware: the codebook composed into its synapse (qat.py)."""
        if getattr(self, "quantize", ""):
            from .qat import spike_generator_currents
            return self.spike_generator.static_lif(spike_generator_currents(self, idx), self.cfg.T)
        return self.generate_spikes(self.codebook.lookup(idx).detach())

    def decode_spikes(self, spikes: torch.Tensor) -> list[torch.Tensor]:
        out = [spikes]
        for layer in self.decoder:
            out.append(layer(out[-1]))
        return out[1:]

    def readout_image(self, spikes: torch.Tensor) -> torch.Tensor:
        """Decoder's last synapse, PSP over T, tanh: an image in [-1, 1]."""
        if getattr(self, "quantize", ""):
            from .qat import readout
            y = unfold_time(readout(self, fold_time(spikes)), spikes.shape[0])
        else:
            y = unfold_time(self.readout(fold_time(spikes)), spikes.shape[0])
        return tanh_readout(psp(y, self.cfg.psp_decay))

    # -- whole model ---------------------------------------------------------
    def forward(self, images01: torch.Tensor) -> dict:
        enc = self.encode_spikes(images01)
        z = self.features(enc[-1])
        zq, idx, code_loss = self.codebook(z)
        asg = self.generate_spikes(zq)
        align = (F.mse_loss(synaptic_filter(asg), enc[-1].detach())
                 + self.cfg.commitment * F.mse_loss(synaptic_filter(asg).detach(), enc[-1]))
        recon = self.readout_image(self.decode_spikes(asg)[-1])
        rec = F.mse_loss(recon, images01 * 2 - 1) / self.data_variance
        return {"loss": rec + code_loss + align, "recon": rec.detach(),
                "codebook": code_loss.detach(), "align": align.detach(),
                "images": to_unit(recon.detach()), "codes": idx, "features": z,
                "output": recon}

    def decoding_side(self) -> nn.ModuleList:
        """What turns codes into images: trained further, alone, by the decoder stage."""
        return nn.ModuleList([getattr(self, name) for name in DECODING_SIDE])

    def decode_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Code grid [B, H, W] -> images in [-1, 1], differentiable in the decoding
        side only (the codebook stays fixed)."""
        spikes = self.generate_spikes_idx(idx)
        return self.readout_image(self.decode_spikes(spikes)[-1])

    def decode_with_loss(self, idx: torch.Tensor, images01: torch.Tensor) -> dict:
        """Reconstruction loss of fixed code grids against the images they encode."""
        recon = self.decode_images(idx)
        rec = F.mse_loss(recon, images01 * 2 - 1) / self.data_variance
        return {"loss": rec, "recon": rec.detach(), "output": recon}

    @torch.no_grad()
    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        return self.codebook.nearest(self.features(self.encode_spikes(images01)[-1]))

    @torch.no_grad()
    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """Code grid [B, H, W] -> images [B, C, H, W] in [0, 1]."""
        return to_unit(self.decode_images(idx))
