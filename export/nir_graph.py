"""Model -> NIR graph, built from the model's own parameters (never Norse's `to_nir`).

Layout of the written graph (shapes exclude batch and time):

    top:  image  -> encoder  -> feature          (one NIRGraph per spiking part,
          codes  -> decoder  -> image_phases       each with one Input "input"
          tokens -> denoiser -> logits             and its Output(s))

or one part alone (`part=`). The metadata says how to step it and what the host
does, as typed keys (export/nir_schema.py). Per-step semantics: spikediff.neuron's
(dt in metadata, forward Euler as Norse's `lif_box`): LIF `v <- v + dt/tau * (v_leak - v + r*I)`,
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
- the code lookup (one-hot codes -> code vectors) folded into the spike
  generator's synapse, and the denoiser's token and step embeddings into its first
  synapse (spikediff.fold): no Conv2d -> Conv2d chain is left;
- the spiking form (`form="spiking"`): the analog readouts (LI, I) become host
  `readout` records, so that every node is a synapse or a spiking neuron.
"""
from __future__ import annotations

import copy

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

from . import nir_schema

FORMAT = nir_schema.FORMAT


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


# -- metadata (structured: export/nir_schema.py) ---------------------------------
def _meta(model, part: str, input_info: dict, records: list[dict], extra: dict) -> dict:
    cfg = model.config
    T = cfg.vq.T if part in ("encoder", "decoder") else cfg.denoiser.T
    md = {
        "format": FORMAT,
        "part": part,
        "form": "full",
        "dt": float(DT),
        "T": int(T),
        **nir_schema.CONVENTIONS,
        "input": {"node": "input", **input_info},
        "readout": {"nodes": ["output"], "at": "last_step"},
        "host": nir_schema.host(records),
        "preset": str(cfg.preset),
        "spikediff_version": __version__,
        "weights_sha256": weights_hash(model.vq, model.denoiser),
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
    # the feature (1-a)*PSP + a*rate: two readouts summing into the Output, read at the last step
    nodes["readout.psp"] = li_node(shape, vq.cfg.psp_decay, 1 - a)
    nodes["readout.rate"] = integrator_node(shape, a / T)
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges += [(prev, "readout.psp"), (prev, "readout.rate"),
              ("readout.psp", "output"), ("readout.rate", "output")]
    records = [
        {"op": "input_current", "when": "before", "scale": 1.0, "offset": -0.5},
        {"op": "nearest_code", "when": "after", "metric": "l2",
         "codebook": _np(vq.codebook.embedding, dtype)},  # K x D
    ]
    return _graph(nodes, edges, _meta(model, "encoder", {
        "shape": [C, S, S], "encoding": "analog"}, records, {
        "mix_a": a, "psp_decay": float(vq.cfg.psp_decay)}))


def decoder_graph(model, dtype=np.float64) -> nir.NIRGraph:
    vq = model.vq
    K, D = vq.cfg.codebook_size, vq.cfg.code_dim
    h, w = model.grid
    nodes = {"input": nir.Input(input_type=np.array([K, h, w]))}
    # The code lookup (a bias-free 1x1 map of the one-hot codes) folded into the spike
    # generator's synapse: one Conv2d on the one-hot spikes, exact (zero padding maps to
    # zero codes), so the graph has no Conv2d -> Conv2d chain.
    sg = vq.spike_generator
    _check_spiking_conv(sg, "vq.spike_generator")
    W, b = folded_conv(sg)                                   # [D, D, k, k], [D]
    emb = vq.codebook.embedding.detach().double()             # [K, D]
    W = torch.einsum("odkl,cd->ockl", W.double(), emb)       # [D, K, k, k]
    nodes["spike_generator.synapse"] = conv_node(W, b, (h, w), tuple(sg.synapse.padding),
                                                 tuple(sg.synapse.stride), dtype)
    nodes["spike_generator.lif"] = lif_node((D, h, w))
    edges = [("input", "spike_generator.synapse"),
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
    # maps after decoder.i are phase-stacked (space-to-depth, torch.pixel_unshuffle order)
    records = [
        {"op": "one_hot", "when": "before", "classes": int(K)},
        {"op": "pixel_shuffle", "when": "after", "factor": int(p_out)},
        {"op": "tanh", "when": "after"},
        {"op": "affine", "when": "after", "scale": 0.5, "offset": 0.5},  # [-1, 1] -> [0, 1]
    ]
    return _graph(nodes, edges, _meta(model, "decoder", {
        "shape": [K, h, w], "encoding": "spikes"}, records, {
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
        # binary spikes: the one-hot token grid (K+1 classes, K = mask), then the one-hot
        # step t (N+1 classes) at every position; layers.0.synapse is the token and time
        # embeddings, the first conv and its batch norm folded into one conv (spikediff.fold)
        cin = (K + 1) + (N + 1)
        first = {"op": "one_hot_tokens_and_step", "when": "before",
                 "token_classes": int(K + 1), "step_classes": int(N + 1)}
        encoding = "spikes"
    elif mode == "raw":  # the paper's input: token id and step t as two analog channels
        cin = 2
        first = {"op": "input_current", "when": "before", "scale": 1.0, "offset": 0.0,
                 "channels": ["token id", "diffusion step t"]}
        encoding = "analog"
    else:
        raise ExportError(f"denoiser token_input {mode!r} has no NIR mapping")
    nodes = {"input": nir.Input(input_type=np.array([cin, h, w]))}
    edges.append(("input", "layers.0.synapse"))
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
    # the head over concat(last, first): two synapses summing into the mean over T
    nodes["head.last"] = conv_node(W[:, :c_last], b, (h, w), 1, 1, dtype)
    nodes["head.first"] = conv_node(W[:, c_last:], torch.zeros_like(b), (h, w), 1, 1, dtype)
    T = den.cfg.T
    nodes["readout.mean"] = integrator_node((K, h, w), 1.0 / T)
    nodes["output"] = nir.Output(output_type=np.array([K, h, w]))
    edges += [(prev, "head.last"), ("layers.0.lif", "head.first"),
              ("head.last", "readout.mean"), ("head.first", "readout.mean"),
              ("readout.mean", "output")]
    d = model.config.diffusion
    records = [first, {"op": "sample_tokens", "when": "between_calls", "mask_id": int(den.mask_id),
                       "diffusion_steps": int(N), "reveal": "each masked token with probability "
                       "1/(steps left)", "temperature": float(d.temperature)}]
    return _graph(nodes, edges, _meta(model, "denoiser", {
        "shape": [cin, h, w], "encoding": encoding}, records, {
        "token_input": mode, "codebook_size": int(K), "mask_id": int(den.mask_id),
        "diffusion_steps": int(N)}))


# -- the spiking form: readouts to the host -----------------------------------------
def spiking_form(sub: nir.NIRGraph) -> nir.NIRGraph:
    """The same part with its analog readouts (LI, I) moved to the host: every node a
    chip sees is then a synapse or a spiking neuron. The nodes that fed the readouts
    feed the Output instead (the denoiser's two head synapses sum into it, as they
    summed into the readout), read at every step, and a host `readout` record says
    how to integrate it: value = sum_k gain_k * sum_t decay_k^(T-1-t) * output_t,
    exactly what the LI (decay 1 - dt/tau, gain dt r / tau) and I (decay 1, gain dt r)
    nodes did. (NIR graphs have one Output per subgraph, so the sum stays in it.)"""
    dt = float(sub.metadata["dt"])
    readouts = {n: v for n, v in sub.nodes.items() if isinstance(v, (nir.LI, nir.I))}
    if not readouts:
        return copy.deepcopy(sub)
    outs = [n for n, v in sub.nodes.items() if isinstance(v, nir.Output)]
    if len(outs) != 1:
        raise ExportError(f"a spiking form needs one Output, the graph has {len(outs)}")
    out = outs[0]
    sources = sorted({a for a, b in sub.edges if b in readouts and a not in readouts})
    nodes = {n: copy.deepcopy(v) for n, v in sub.nodes.items() if n not in readouts}
    shape = np.array(nodes[sources[0]].output_type["output"])
    nodes[out] = nir.Output(output_type=shape)
    edges = [(a, b) for a, b in sub.edges if a in nodes and b in nodes] + \
        [(src, out) for src in sources]
    decays, gains = [], []
    for n, v in readouts.items():
        if isinstance(v, nir.LI):
            a = dt / float(np.asarray(v.tau).flat[0])
            decays.append(1.0 - a)
            gains.append(a * float(np.asarray(v.r).flat[0]))
        else:
            decays.append(1.0)
            gains.append(dt * float(np.asarray(v.r).flat[0]))
        for p in ("tau", "r"):
            arr = np.asarray(getattr(v, p, 0.0))
            if not np.all(arr == arr.flat[0]):
                raise ExportError(f"readout {n!r}: {p} varies across neurons; no host readout")
    if len({frozenset(a for a, b in sub.edges if b == n) for n in readouts}) != 1:
        raise ExportError("the readouts read different nodes; no single host readout")
    md = copy.deepcopy(sub.metadata)
    md["form"] = "spiking"
    md["readout"] = {"nodes": [out], "at": "every_step"}
    records = nir_schema.host_records(sub.metadata)
    records.insert(1 if records and records[0].get("when") == "before" else 0,
                   {"op": "readout", "when": "after", "sources": [out],
                    "decays": np.array(decays), "gains": np.array(gains)})
    md["host"] = nir_schema.host(records)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md)


def build_graph(model, dtype=np.float64, *, part: str | None = None,
                form: str = "full") -> nir.NIRGraph:
    """The whole exportable model: one top-level NIRGraph with three subgraphs; with
    `part`, that part alone as the top-level graph. form "spiking": readouts on the host."""
    model = copy.deepcopy(model).inference()  # a no-op on a loaded (folded) model
    parts = {"encoder": encoder_graph, "decoder": decoder_graph, "denoiser": denoiser_graph}
    if form not in ("full", "spiking"):
        raise ExportError(f"form must be 'full' or 'spiking', got {form!r}")
    graphs = {}
    for name, make in parts.items():
        if part is None or part == name:
            g = make(model, dtype)
            if name != "encoder" and model.config.train.quantize:  # what qat.py trained for
                from export.loihi8 import quantize_graph
                quantize_graph(g)
            graphs[name] = spiking_form(g) if form == "spiking" else g
    if part is not None:
        g = graphs[part]
        g.metadata.update(_sampling(model))
        return g

    def shape(g, io):
        return np.array(next(iter((g.input_type if io == "in" else g.output_type).values())))

    enc, dec, den = graphs["encoder"], graphs["decoder"], graphs["denoiser"]
    nodes = {"image": nir.Input(input_type=shape(enc, "in")), "encoder": enc,
             "codes": nir.Input(input_type=shape(dec, "in")), "decoder": dec,
             "tokens": nir.Input(input_type=shape(den, "in")), "denoiser": den}
    edges = [("image", "encoder"), ("codes", "decoder"), ("tokens", "denoiser")]
    for pname, g, io in (("encoder", enc, "feature"), ("decoder", dec, "image_phases"),
                         ("denoiser", den, "logits")):
        nodes[io] = nir.Output(output_type=shape(g, "out"))
        edges.append((pname, io))
    md = {
        "format": FORMAT, "part": "model", "form": form,
        "spikediff_version": __version__, "preset": str(model.config.preset),
        # how the parts are called: generate = denoiser calls (sampling steps, then the
        # refinement steps), then the decoder on the final grid; encode = encoder + host
        "sequence": {"generate": ["denoiser", "decoder"], "encode": ["encoder"]},
        **_sampling(model),
        "T_denoiser": int(model.config.denoiser.T), "channels": int(model.channels),
        "image_size": int(model.image_size),
        "diffusion_steps": int(model.diffusion_steps),
        "codebook_size": int(model.vq.cfg.codebook_size),
        "phase_factor": int(dec.metadata["phase_factor"]),
        "token_input": model.denoiser.cfg.token_input,
        # spikediff-run --compare checks that its Norse model is the one exported
        "weights_sha256": weights_hash(model.vq, model.denoiser),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=md)


def _sampling(model) -> dict:
    d = model.config.diffusion
    return {"grid": np.array(model.grid), "temperature": float(d.temperature),
            "refine_steps": int(d.refine_steps), "refine_fraction": float(d.refine_fraction),
            "refine_temperature": float(d.refine_temperature)}


def write(graph: nir.NIRGraph, path) -> None:
    """nir.write. The LIF `v_reset` field stays, although nir 1.0.4 (sinabs' pin) has
    none and refuses the file: nir 1.0.4 defines its LIF's reset as a subtraction, so
    a file without the field would load there as a different network. `--target
    sinabs` writes what nir 1.0.4 reads, with that difference measured (docs/nir.md)."""
    nir.write(str(path), graph)


def refinement_of(metadata: dict):
    """The sampler's refinement recorded in a graph's top-level metadata; files
    written before refinement existed have none."""
    from spikediff.diffusion import Refinement
    d = Refinement()
    return Refinement(int(metadata.get("refine_steps", 0)),
                      float(metadata.get("refine_fraction", d.fraction)),
                      float(metadata.get("refine_temperature", d.temperature)))


def node_counts(graph: nir.NIRGraph) -> dict[str, dict[str, int]]:
    """{part: {node type: count}} for each part subgraph, or for a one-part graph."""
    def count(g):
        c: dict[str, int] = {}
        for n in g.nodes.values():
            c[type(n).__name__] = c.get(type(n).__name__, 0) + 1
        return dict(sorted(c.items()))
    subs = {k: v for k, v in graph.nodes.items() if isinstance(v, nir.NIRGraph)}
    if not subs:
        return {str(graph.metadata.get("part", "graph")): count(graph)}
    return {k: count(v) for k, v in subs.items()}
