"""ONNX export of the three parts, unrolled over T (one graph step per time step).

ONNX has no spiking semantics, so each LIF population is written out as T
steps of spikediff.neuron.lif_step (Norse's lif_box expression without the
surrogate, so PyTorch and ONNX agree to float rounding). Unlike the NIR graph,
deterministic host steps that ONNX can express are inside (the model's own
functions: image current, nearest code, tanh read-out):
- encoder.onnx:  images [B, C, H, W] in [0, 1] -> feature [B, D, h, w], codes [B, h, w] (argmin)
- decoder.onnx:  codes [B, h, w] (int64) -> images [B, C, H, W] in [0, 1]
- denoiser.onnx: tokens [B, h, w], t [B] (int64) -> logits [B, K, h, w] (mean over T)
Sampling between denoiser calls stays on the host.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from spikediff.neuron import lif_run, psp
from spikediff.vqsvae import image_current, tanh_readout, to_unit

from .nir_graph import ExportError

OPSET = 17


# Lists over T, not [T, ...] tensors: the exported graph is one op chain per step.
def _layer_static(layer, x, T):
    y = layer.bn(layer.synapse(x))
    return lif_run([y] * T)


def _layer(layer, spikes):
    return lif_run([layer.bn(layer.synapse(s)) for s in spikes])


class Encoder(nn.Module):
    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, images01):
        vq = self.vq
        s = _layer_static(vq.encoder[0], image_current(images01), vq.cfg.T)
        for layer in vq.encoder[1:]:
            s = _layer(layer, s)
        z = vq.features(torch.stack(s))
        return z, vq.codebook.nearest(z)


class Decoder(nn.Module):
    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, codes):
        vq = self.vq
        s = _layer_static(vq.spike_generator, vq.codebook.lookup(codes), vq.cfg.T)
        for layer in vq.decoder:
            s = _layer(layer, s)
        y = torch.stack([vq.readout(x) for x in s])
        return to_unit(tanh_readout(psp(y, vq.cfg.psp_decay)))


class Denoiser(nn.Module):
    def __init__(self, den):
        super().__init__()
        self.den = den

    def forward(self, tokens, t):
        den = self.den
        first = _layer_static(den.layers[0], den.network_input(tokens, t), den.cfg.T)
        s = first
        for layer in den.layers[1:]:
            s = _layer(layer, s)
        logits = [den.head(torch.cat([a, b], 1)) for a, b in zip(s, first)]
        return torch.stack(logits).mean(0)


def example_inputs(model, n: int = 2, seed: int = 0) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(seed)
    C, S, K = model.channels, model.image_size, model.vq.cfg.codebook_size
    return {
        "encoder": (torch.rand(n, C, S, S, generator=g),),
        "decoder": (torch.randint(0, K, (n, *model.grid), generator=g),),
        "denoiser": (torch.randint(0, K + 1, (n, *model.grid), generator=g),
                     torch.randint(1, model.diffusion_steps + 1, (n,), generator=g)),
    }


NAMES = {
    "encoder": (["images"], ["feature", "codes"]),
    "decoder": (["codes"], ["images"]),
    "denoiser": (["tokens", "t"], ["logits"]),
}


def modules(model) -> dict[str, nn.Module]:
    model = copy.deepcopy(model).eval()
    model.vq.float()
    model.denoiser.float()
    return {"encoder": Encoder(model.vq).eval(), "decoder": Decoder(model.vq).eval(),
            "denoiser": Denoiser(model.denoiser).eval()}


def reference(model, part: str, inputs: tuple) -> tuple:
    """The model's own outputs (the Norse path) for a part's inputs."""
    with torch.no_grad():
        if part == "encoder":
            z = model.vq.features(model.vq.encode_spikes(inputs[0])[-1])
            return z, model.vq.codebook.nearest(z)
        if part == "decoder":
            return (model.vq.decode(inputs[0]),)
        return (model.denoiser(*inputs),)


def export_onnx(model, out_dir: str | Path) -> dict[str, Path]:
    """Writes encoder.onnx, decoder.onnx, denoiser.onnx into out_dir (must exist)."""
    out_dir = Path(out_dir)
    paths = {}
    ex = example_inputs(model)
    for part, mod in modules(model).items():
        ins, outs = NAMES[part]
        dyn = {name: {0: "batch"} for name in ins + outs}
        path = out_dir / f"{part}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(mod, ex[part], str(path), input_names=ins, output_names=outs,
                                  dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
            except Exception as e:
                raise ExportError(f"ONNX export of the {part} failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}") from None
        paths[part] = path
    return paths


def check_onnx(model, paths: dict[str, Path], n: int = 3, seed: int = 1) -> dict[str, float]:
    """Max |onnxruntime - PyTorch model| per part and output (codes: mismatch count)."""
    import onnxruntime as ort
    ex = example_inputs(model, n, seed)
    res = {}
    for part, path in paths.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ins, outs = NAMES[part]
        got = sess.run(None, {k: v.numpy() for k, v in zip(ins, ex[part])})
        ref = reference(model, part, ex[part])
        for name, r, o in zip(outs, ref, got):
            o = torch.from_numpy(o)
            if name == "codes":
                res[f"{part}.{name} mismatches"] = float((r != o).sum())
            else:
                res[f"{part}.{name} max_abs"] = float((r.double() - o.double()).abs().max())
    return res
