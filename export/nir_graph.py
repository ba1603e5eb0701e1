"""Model -> NIR graph, built from the model's own parameters (never Norse's `to_nir`).

Layout of the written graph (shapes exclude batch and time):

    top:  image  -> encoder  -> feature          (one NIRGraph per spiking part,
          codes  -> decoder  -> image_phases       each with one Input "input"
          tokens -> denoiser -> logits             and one Output "output")

Per-step semantics the graph was made for: spikediff.neuron's (dt in metadata,
forward Euler as Norse's `lif_box`): LIF `v <- v + dt/tau * (v_leak - v + r*I)`,
spike if `v > v_threshold`, then `v = v_reset`; LI the same without spikes;
I `v <- v + dt * r * I`. Several edges into one node are summed. The neuron
nodes' parameters are translated here both ways: `lif_node`, `li_node`,
`integrator_node` write them, `step_parameters` reads them back for a runner.

Exact forms used for what NIR cannot say directly:
- batch norm (eval-mode running statistics) folded into the preceding synapse,
  computed in float64;
- transposed convolutions in polyphase (space-to-depth) form: a map at P times
  the latent resolution is carried as a latent-resolution map with C*P*P
  channels (channel c*P*P + a*P + b at (i, j) is pixel (P*i + a, P*j + b),
  torch's pixel_unshuffle order). Every stride-2 ConvT(k3, p1, op1) and the
  final stride-1 ConvT(k3, p1) is then an ordinary 3x3 convolution (padding 1)
  between phase-stacked maps, with structured zeros; its kernel is read off the
  torch operator by impulse probing, so it is exact by construction (checked
  against conv_transpose2d in the tests). LIF is elementwise, so spiking the
  phase-stacked map is the full-resolution map's spiking up to a fixed
  permutation of neurons. The final depth-to-space is a host reshape
  (`torch.pixel_shuffle(x, P)`), recorded in metadata. A dense Affine of the
  same map would be O((HW)^2) (1.2 GB for 14x14 -> 28x28); this is O(HW).
- concatenations (the denoiser head over concat(last, first)) as two Conv2d
  nodes summing into the readout;
- the encoder feature `(1-a)*PSP + a*rate` as two readouts summing into the
  encoder's Output: an LI node (dt/tau = 1-decay, r = (1-a)/(1-decay)) gives
  (1-a)*PSP, an I node (r = a/(T*dt)) gives a*rate; read at the last step;
- token ids as one-hot grids into 1x1 Conv2d nodes (the embeddings).
"""
from __future__ import annotations

import copy
import json

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spikediff import __version__
from spikediff.checkpoint import weights_hash
from spikediff.errors import SpikediffError
from spikediff.fold import bn_fold, folded_conv
from spikediff.neuron import (DT, TAU_MEM, V_RESET, V_TH, IFParameters, IParameters,
                              LIFParameters, LIParameters, per_step)

FORMAT = "spikediff-nir/1"
INPUT_ENCODING = "analog current repeated for T steps"


class ExportError(SpikediffError):
    pass


# -- parameters -----------------------------------------------------------------
def _np(x: torch.Tensor, dtype) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy().astype(dtype)


def phase_kernel(op, cin: int, p_in: int, p_out: int, probe: int = 5) -> torch.Tensor:
    """3x3 kernel (padding 1) of a shift-equivariant linear map between phase-stacked maps.

    `op` maps a full-resolution [N, cin, p_in*n, p_in*n] tensor to [N, cout, p_out*n, p_out*n]
    (no bias). Impulses at the centre of a probe x probe latent grid give the kernel taps.
    """
    m = probe // 2
    q = cin * p_in * p_in
    imp = torch.zeros(q, q, probe, probe, dtype=torch.float64)
    imp[torch.arange(q), torch.arange(q), m, m] = 1.0
    x = F.pixel_shuffle(imp, p_in) if p_in > 1 else imp
    y = op(x)
    Y = F.pixel_unshuffle(y, p_out) if p_out > 1 else y  # [q, cout*p_out^2, probe, probe]
    outside = Y.clone()
    outside[:, :, m - 1:m + 2, m - 1:m + 2] = 0
    if outside.abs().max() > 0:
        raise ExportError("layer's receptive field does not fit a 3x3 kernel at latent resolution")
    # conv2d is a cross-correlation: out[i] = sum_k W[k] in[i + k - 1], so an impulse
    # at m gives out[m + 1 - k] = W[k].
    core = Y[:, :, m - 1:m + 2, m - 1:m + 2].flip(-1).flip(-2)
    return core.permute(1, 0, 2, 3).contiguous()  # [cout*p_out^2, q, 3, 3]


def convT_phase(convT: nn.ConvTranspose2d, p_in: int, name: str = "ConvTranspose2d") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Phase-stacked 3x3 conv equal to `convT` (stride 1 or 2, k3, p1): (weight, bias, p_out)."""
    k, s, p = convT.kernel_size, convT.stride, convT.padding
    op_pad = convT.output_padding
    ok = (k == (3, 3) and p == (1, 1) and convT.groups == 1 and convT.dilation == (1, 1)
          and ((s == (2, 2) and op_pad == (1, 1)) or (s == (1, 1) and op_pad == (0, 0))))
    if not ok:
        raise ExportError(f"layer '{name}': ConvTranspose2d(kernel={k}, stride={s}, padding={p}, "
                          f"output_padding={op_pad}) has no exact polyphase 3x3 form here "
                          "(supported: k3 p1 with stride 2 + output_padding 1, or stride 1)")
    w = convT.weight.detach().double()
    stride = s[0]
    p_out = p_in * stride

    def op(x):
        return F.conv_transpose2d(x, w, stride=stride, padding=1, output_padding=stride - 1)

    try:
        W = phase_kernel(op, convT.in_channels, p_in, p_out)
    except ExportError as e:
        raise ExportError(f"layer '{name}': {e}") from None
    b = convT.bias.detach().double() if convT.bias is not None else torch.zeros(convT.out_channels,
                                                                             dtype=torch.float64)
    return W, b.repeat_interleave(p_out * p_out), p_out


# -- node factories ---------------------------------------------------------------
def conv_node(weight, bias, hw, padding, stride=1, dtype=np.float64) -> nir.Conv2d:
    return nir.Conv2d(input_shape=tuple(int(v) for v in hw), weight=_np(weight, dtype),
                      stride=stride, padding=padding, dilation=1, groups=1,
                      bias=_np(bias, dtype))


# -- neuron parameters: NIR <-> per step (spikediff.neuron) ----------------------------
def lif_node(shape) -> nir.LIF:
    """The model's LIF (spikediff.neuron's constants) as a NIR node."""
    shape = tuple(int(v) for v in shape)
    return nir.LIF(tau=np.full(shape, TAU_MEM), r=np.ones(shape), v_leak=np.zeros(shape),
                   v_threshold=np.full(shape, V_TH), v_reset=np.full(shape, V_RESET))


def li_node(shape, decay: float, gain: float = 1.0) -> nir.LI:
    """v <- decay*v + gain*I per step: dt/tau = 1 - decay, r = gain / (1 - decay)."""
    shape = tuple(int(v) for v in shape)
    return nir.LI(tau=np.full(shape, DT / (1 - decay)), r=np.full(shape, gain / (1 - decay)),
                  v_leak=np.zeros(shape))


def integrator_node(shape, gain: float) -> nir.I:
    """v <- v + gain*I per step (r = gain / dt)."""
    shape = tuple(int(v) for v in shape)
    return nir.I(r=np.full(shape, gain / DT))


NEURON_NODES = (nir.LIF, nir.LI, nir.I, nir.IF)


def step_parameters(node, dt: float, dtype: torch.dtype):
    """A NIR neuron node's parameters for spikediff.neuron's step functions, at step dt:
    LIFParameters, LIParameters, IParameters or IFParameters (tensors of `dtype`)."""
    def t(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype)

    if isinstance(node, nir.LIF):
        leak, _ = per_step(node.tau, None, dt, dtype)
        return LIFParameters(leak, t(node.r), t(node.v_leak), t(node.v_threshold),
                             t(node.v_reset))
    if isinstance(node, nir.LI):
        leak, _ = per_step(node.tau, None, dt, dtype)
        return LIParameters(leak, t(node.r), t(node.v_leak))
    if isinstance(node, nir.IF):
        _, gain = per_step(None, node.r, dt, dtype)
        return IFParameters(gain, t(node.v_threshold), t(node.v_reset))
    if isinstance(node, nir.I):
        _, gain = per_step(None, node.r, dt, dtype)
        return IParameters(gain)
    raise ExportError(f"{type(node).__name__} is not a neuron node")


def _check_spiking_conv(layer, name: str) -> None:
    from spikediff.layers import SpikingConv
    from spikediff.neuron import LIF
    if not isinstance(layer, SpikingConv):
        raise ExportError(f"layer '{name}' is a {type(layer).__name__}, not a SpikingConv "
                          "(synapse + BatchNorm2d + LIF); no NIR mapping is defined for it")
    if not isinstance(layer.lif, LIF):
        raise ExportError(f"layer '{name}': neuron {type(layer.lif).__name__} is not the "
                          "project's LIF; no NIR mapping is defined for it")
    p = layer.lif.p
    if (float(p.tau_mem_inv) != 1 / TAU_MEM or float(p.v_th) != V_TH
            or float(p.v_reset) != V_RESET or float(p.v_leak) != 0.0):
        raise ExportError(f"layer '{name}': LIF parameters differ from the exported neuron "
                          "(tau 2 dt, threshold 1, reset 0, leak 0)")


def _conv_fold(layer, name: str, hw, dtype) -> nir.Conv2d:
    """A SpikingConv with a regular Conv2d synapse, BN folded in."""
    _check_spiking_conv(layer, name)
    conv = layer.synapse
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ExportError(f"layer '{name}': synapse {conv} is not a plain Conv2d")
    if isinstance(conv.padding, str):
        raise ExportError(f"layer '{name}': string padding {conv.padding!r} is not exported")
    w, b = folded_conv(layer)
    return conv_node(w, b, hw, tuple(conv.padding), tuple(conv.stride), dtype)


# -- metadata ------------------------------------------------------------------
def _meta(model, part: str, host_steps: list[str], extra: dict) -> dict:
    cfg = model.config
    T = cfg.vq.T if part in ("encoder", "decoder") else cfg.denoiser.T
    md = {
        "format": FORMAT,
        "part": part,
        "dt": float(DT),
        "T": int(T),
        "input_encoding": INPUT_ENCODING,
        "neuron": ("LIF: per step v <- v + dt/tau*(v_leak - v + r*I) (forward Euler, Norse "
                   "lif_box), spike if v > v_threshold, then v = v_reset; LI: same, no spike; "
                   "I: v <- v + dt*r*I. Readouts (LI, I) are read at the last step."),
        "host_steps": json.dumps(host_steps),
        "preset": str(cfg.preset),
        "spikediff_version": __version__,
        "layout": "shapes exclude batch and time; maps are [C, H, W]",
    }
    md.update(extra)
    return md


def _graph(nodes: dict, edges: list, metadata: dict) -> nir.NIRGraph:
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# -- the three parts ------------------------------------------------------------
def encoder_graph(model, dtype=np.float64) -> nir.NIRGraph:
    vq = model.vq
    C, S = model.channels, model.image_size
    nodes = {"input": nir.Input(input_type=np.array([C, S, S]))}
    edges, prev, hw = [], "input", (S, S)
    for i, layer in enumerate(vq.encoder):
        conv = _conv_fold(layer, f"vq.encoder.{i}", hw, dtype)
        out = conv.output_type["output"]
        nodes[f"encoder.{i}.synapse"] = conv
        nodes[f"encoder.{i}.lif"] = lif_node(out)
        edges += [(prev, f"encoder.{i}.synapse"), (f"encoder.{i}.synapse", f"encoder.{i}.lif")]
        prev, hw = f"encoder.{i}.lif", tuple(out[1:])
    shape = nodes[prev].output_type["output"]
    a = float(vq.mix.detach())
    T = vq.cfg.T
    nodes["readout.psp"] = li_node(shape, vq.cfg.psp_decay, 1 - a)
    nodes["readout.rate"] = integrator_node(shape, a / T)
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges += [(prev, "readout.psp"), (prev, "readout.rate"),
              ("readout.psp", "output"), ("readout.rate", "output")]
    host = [
        "input: image in [0, 1] minus 0.5, the same analog current at each of T steps",
        "output at the last step is the feature (1-a)*PSP + a*rate: readout.psp gives "
        "(1-a)*sum_t s_t*decay^(T-1-t), readout.rate gives a*mean_t s_t; the two edges sum",
        "nearest-code search (L2, argmin) of each feature vector against the codebook = "
        "decoder/codebook weight[:, :, 0, 0].T (K x D)",
    ]
    return _graph(nodes, edges, _meta(model, "encoder", host, {
        "mix_a": a, "psp_decay": float(vq.cfg.psp_decay)}))


def decoder_graph(model, dtype=np.float64) -> nir.NIRGraph:
    vq = model.vq
    K, D = vq.cfg.codebook_size, vq.cfg.code_dim
    h, w = model.grid
    nodes = {"input": nir.Input(input_type=np.array([K, h, w]))}
    emb = vq.codebook.embedding.detach().double()  # K x D
    nodes["codebook"] = conv_node(emb.t().reshape(D, K, 1, 1), torch.zeros(D, dtype=torch.float64),
                                  (h, w), 0, 1, dtype)
    edges = [("input", "codebook")]
    nodes["spike_generator.synapse"] = _conv_fold(vq.spike_generator, "vq.spike_generator",
                                                  (h, w), dtype)
    nodes["spike_generator.lif"] = lif_node((D, h, w))
    edges += [("codebook", "spike_generator.synapse"),
              ("spike_generator.synapse", "spike_generator.lif")]
    prev, p = "spike_generator.lif", 1
    for i, layer in enumerate(vq.decoder):
        name = f"vq.decoder.{i}"
        _check_spiking_conv(layer, name)
        if not isinstance(layer.synapse, nn.ConvTranspose2d):
            raise ExportError(f"layer '{name}': expected ConvTranspose2d, got "
                              f"{type(layer.synapse).__name__}")
        W, b, p_out = convT_phase(layer.synapse, p, name)
        scale, shift = bn_fold(layer.bn)
        scale, shift = scale.repeat_interleave(p_out ** 2), shift.repeat_interleave(p_out ** 2)
        node = conv_node(W * scale.view(-1, 1, 1, 1), b * scale + shift, (h, w), 1, 1, dtype)
        nodes[f"decoder.{i}.synapse"] = node
        nodes[f"decoder.{i}.lif"] = lif_node(node.output_type["output"])
        edges += [(prev, f"decoder.{i}.synapse"), (f"decoder.{i}.synapse", f"decoder.{i}.lif")]
        prev, p = f"decoder.{i}.lif", p_out
    if not isinstance(vq.readout, nn.ConvTranspose2d):
        raise ExportError(f"layer 'vq.readout': expected ConvTranspose2d, got "
                          f"{type(vq.readout).__name__}")
    W, b, p_out = convT_phase(vq.readout, p, "vq.readout")
    nodes["readout.synapse"] = conv_node(W, b, (h, w), 1, 1, dtype)
    shape = nodes["readout.synapse"].output_type["output"]
    nodes["readout.psp"] = li_node(shape, vq.cfg.psp_decay, 1.0)
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges += [(prev, "readout.synapse"), ("readout.synapse", "readout.psp"),
              ("readout.psp", "output")]
    host = [
        "input: one-hot code grid (K channels), the same at each of T steps",
        "codebook is the 1x1 lookup of code vectors; spike_generator turns them into spikes",
        f"maps after decoder.i are phase-stacked (space-to-depth, torch.pixel_unshuffle order) "
        f"at the latent grid; the output has C*{p_out}^2 channels",
        f"output at the last step: image = tanh(torch.pixel_shuffle(output, {p_out})), "
        "in [-1, 1]; (image + 1) / 2 in [0, 1]",
    ]
    return _graph(nodes, edges, _meta(model, "decoder", host, {
        "phase_factor": int(p_out), "psp_decay": float(vq.cfg.psp_decay),
        "codebook_size": int(K), "code_dim": int(D)}))


def denoiser_graph(model, dtype=np.float64) -> nir.NIRGraph:
    den = model.denoiser
    K, N = den.codebook_size, den.diffusion_steps
    h, w = model.grid
    mode = den.cfg.token_input
    edges = []
    if mode == "embed":
        if not den.spike_input:
            raise ExportError("the denoiser is in its training form; export its inference "
                              "form (spikediff.fold.fold_denoiser), as build_graph does")
        cin = (K + 1) + (N + 1)
        nodes = {"input": nir.Input(input_type=np.array([cin, h, w]))}
        edges.append(("input", "layers.0.synapse"))
        inp = ("binary spikes: channels 0..K the one-hot token grid (K+1 classes, K = mask), "
               "channels K+1.. the one-hot diffusion step t (N+1 classes) at every position; "
               "layers.0.synapse is the token and time embeddings, the first conv and its "
               "batch norm folded into one conv (spikediff.fold)")
    elif mode == "raw":
        nodes = {"input": nir.Input(input_type=np.array([2, h, w]))}
        edges.append(("input", "layers.0.synapse"))
        inp = "2 analog channels: token id and diffusion step t as floats (the paper's input)"
    else:
        raise ExportError(f"denoiser token_input {mode!r} has no NIR mapping")
    prev = None
    for i, layer in enumerate(den.layers):
        conv = _conv_fold(layer, f"denoiser.layers.{i}", (h, w), dtype)
        nodes[f"layers.{i}.synapse"] = conv
        nodes[f"layers.{i}.lif"] = lif_node(conv.output_type["output"])
        if prev is not None:
            edges.append((prev, f"layers.{i}.synapse"))
        edges.append((f"layers.{i}.synapse", f"layers.{i}.lif"))
        prev = f"layers.{i}.lif"
    head = den.head
    if not isinstance(head, nn.Conv2d) or head.padding != (1, 1) or head.stride != (1, 1):
        raise ExportError(f"layer 'denoiser.head': expected Conv2d k3 p1, got {head}")
    c_last = den.layers[-1].synapse.out_channels
    W = head.weight.detach().double()
    b = head.bias.detach().double()
    nodes["head.last"] = conv_node(W[:, :c_last], b, (h, w), 1, 1, dtype)
    nodes["head.first"] = conv_node(W[:, c_last:], torch.zeros_like(b), (h, w), 1, 1, dtype)
    T = den.cfg.T
    nodes["readout.mean"] = integrator_node((K, h, w), 1.0 / T)
    nodes["output"] = nir.Output(output_type=np.array([K, h, w]))
    edges += [(prev, "head.last"), ("layers.0.lif", "head.first"),
              ("head.last", "readout.mean"), ("head.first", "readout.mean"),
              ("readout.mean", "output")]
    host = [
        "input: " + inp + "; the same at each of T steps",
        "head over concat(last, first) = head.last + head.first summed into readout.mean "
        "(I, r = 1/(T*dt)): the output at the last step is the mean over T of the logits",
        "between denoiser calls (absorbing diffusion sampling): softmax(logits/temperature), "
        "draw a token per position, reveal each still-masked token with probability "
        "1/(steps left) (spikediff.diffusion.sample_tokens); finally decode the grid",
    ]
    return _graph(nodes, edges, _meta(model, "denoiser", host, {
        "token_input": mode, "codebook_size": int(K), "mask_id": int(den.mask_id),
        "diffusion_steps": int(N)}))


def build_graph(model, dtype=np.float64) -> nir.NIRGraph:
    """The whole exportable model: one top-level NIRGraph with three subgraphs."""
    model = copy.deepcopy(model).inference()  # a no-op on a loaded (folded) model
    enc = encoder_graph(model, dtype)
    dec = decoder_graph(model, dtype)
    den = denoiser_graph(model, dtype)

    def shape(g, io):
        return np.array(next(iter((g.input_type if io == "in" else g.output_type).values())))

    nodes = {
        "image": nir.Input(input_type=shape(enc, "in")), "encoder": enc,
        "feature": nir.Output(output_type=shape(enc, "out")),
        "codes": nir.Input(input_type=shape(dec, "in")), "decoder": dec,
        "image_phases": nir.Output(output_type=shape(dec, "out")),
        "tokens": nir.Input(input_type=shape(den, "in")), "denoiser": den,
        "logits": nir.Output(output_type=shape(den, "out")),
    }
    edges = [("image", "encoder"), ("encoder", "feature"), ("codes", "decoder"),
             ("decoder", "image_phases"), ("tokens", "denoiser"), ("denoiser", "logits")]
    host = [
        "encoder: image - 0.5 repeated T steps -> feature; host: nearest code (argmin L2) "
        "against decoder/codebook",
        "denoiser: called once per sampling step from a fully masked grid, then once per "
        "refinement step (refine_steps, 0: none) on the finished grid with a random "
        "refine_fraction of it re-masked; host: softmax sampling and reveal schedule between "
        "calls (absorbing diffusion, spikediff.diffusion.sample_tokens)",
        "decoder: one-hot codes repeated T steps -> image_phases; host: "
        "tanh(pixel_shuffle(x, phase_factor)), then (x + 1) / 2",
    ]
    md = _meta(model, "model", host, {
        "T_denoiser": int(model.config.denoiser.T), "channels": int(model.channels),
        "image_size": int(model.image_size), "grid": np.array(model.grid),
        "temperature": float(model.config.diffusion.temperature),
        "refine_steps": int(model.config.diffusion.refine_steps),
        "refine_fraction": float(model.config.diffusion.refine_fraction),
        "refine_temperature": float(model.config.diffusion.refine_temperature),
        "diffusion_steps": int(model.diffusion_steps), "codebook_size": int(model.vq.cfg.codebook_size),
        "phase_factor": int(dec.metadata["phase_factor"]),
        "token_input": model.denoiser.cfg.token_input,
        # spikediff-run --compare checks that its Norse model is the one exported
        "weights_sha256": weights_hash(model.vq, model.denoiser),
    })
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md)


def refinement_of(metadata: dict):
    """The sampler's refinement recorded in a graph's top-level metadata; files
    written before refinement existed have none."""
    from spikediff.diffusion import Refinement
    d = Refinement()
    return Refinement(int(metadata.get("refine_steps", 0)),
                      float(metadata.get("refine_fraction", d.fraction)),
                      float(metadata.get("refine_temperature", d.temperature)))


def node_counts(graph: nir.NIRGraph) -> dict[str, dict[str, int]]:
    """{subgraph: {node type: count}} for each nested graph (and 'top')."""
    out = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            c: dict[str, int] = {}
            for n in node.nodes.values():
                c[type(n).__name__] = c.get(type(n).__name__, 0) + 1
            out[name] = dict(sorted(c.items()))
    return out
