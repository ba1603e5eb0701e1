"""Exact operation counts from recorded spike activity (SPEC section 6).

The unit of counting is one *synapse layer* (a Conv2d, ConvTranspose2d or
Linear) described by a :class:`LayerSpec`. Its input, recorded during a real
run, is either

- spikes ``[T, B, C, H, W]`` (or ``[T, B, F]`` for a Linear): every nonzero
  entry is one event, which costs one accumulate (AC) per outgoing connection
  actually present. For a conv that is, per kernel tap and output channel, the
  output positions the spike really reaches: a spike at the border of a padded
  conv, or between the stride grid, reaches fewer. ``fanout_map`` gives that
  number per input position from the geometry alone, and the synaptic
  operations are ``sum(events * fanout)``; or
- analog values (image currents, code vectors, the denoiser's input current):
  the layer costs its dense multiply-accumulates (MACs) at every time step it
  is fed. A static input ``[B, C, H, W]`` fed at T steps costs T times the
  dense MACs (the headline, as the reference network receives it); our
  implementation computes a repeated static input once, which is reported as
  ``macs_once``.

"Dense MACs" count the connections that exist (taps falling on padding are
not connections); ``macs_padded`` is the conventional k*k*Cin*Cout*Ho*Wo
figure, kept for comparison with other papers' tables.

Neuron updates: every neuron of the LIF population after the synapse, every
time step; active = spiked at that step.

Entry points for other back ends (e.g. a Lava run):
``count_layer(spec, x, out_spikes=..., T=...)`` for one layer and one batch,
``count_recording(specs, inputs, outputs, T=...)`` for a whole recording
(layer name -> input tensor, layer name -> output spikes), both returning
:class:`LayerCounts` that add with ``+``. ``model_layers(model)`` gives the
specs (names such as ``encoder.0``, ``denoiser.head``) of a SpikingDiffusion.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COMPONENTS = ("encoder", "spike_generator", "decoder", "denoiser")


# --------------------------------------------------------------- geometry

@dataclass(frozen=True)
class LayerSpec:
    """One synapse layer: geometry, what feeds it, and whether neurons follow."""
    name: str
    component: str                 # encoder | spike_generator | decoder | denoiser
    kind: str                      # conv | convT | linear
    in_shape: tuple[int, ...]      # (C, H, W) or (F,), no batch/time
    out_shape: tuple[int, ...]
    analog: bool                   # fed analog values (MACs) instead of spikes (ACs)
    has_neurons: bool              # a LIF population follows (False: head/readout)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    output_padding: tuple[int, int] = (0, 0)
    groups: int = 1
    note: str = ""
    # Fed a one-hot grid (the folded denoiser input): the cheapest exact ANN
    # implementation gathers and adds the weights of the ones, no multiplies.
    one_hot: bool = False

    @property
    def in_channels(self) -> int:
        return self.in_shape[0]

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def neurons(self) -> int:
        return int(np.prod(self.out_shape)) if self.has_neurons else 0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def spec_of(module: nn.Module, name: str, component: str, in_shape, *, analog: bool,
            has_neurons: bool, note: str = "", one_hot: bool = False) -> LayerSpec:
    """LayerSpec of a real torch layer for an input of shape in_shape (no batch/time)."""
    in_shape = tuple(int(s) for s in in_shape)
    if isinstance(module, nn.Linear):
        return LayerSpec(name, component, "linear", in_shape, (module.out_features,),
                         analog, has_neurons, note=note, one_hot=one_hot)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        kind = "convT" if isinstance(module, nn.ConvTranspose2d) else "conv"
        k, s, p, d = (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                      _pair(module.dilation))
        op = _pair(module.output_padding) if kind == "convT" else (0, 0)
        if isinstance(module.padding, str):
            raise ValueError(f"{name}: string padding is not supported")
        hw = [_out_len(kind, in_shape[1 + i], k[i], s[i], p[i], d[i], op[i]) for i in range(2)]
        return LayerSpec(name, component, kind, in_shape, (module.out_channels, *hw), analog,
                         has_neurons, k, s, p, d, op, module.groups, note, one_hot)
    raise TypeError(f"{name}: cannot count a {type(module).__name__}")


def _out_len(kind, n, k, s, p, d, op) -> int:
    if kind == "conv":
        return (n + 2 * p - d * (k - 1) - 1) // s + 1
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


def fanout_1d(kind: str, n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """Per input index: how many kernel taps connect it to a real output index.

    conv:  output o reads input i = o*s - p + a*d  (tap a)  ->  o = (i + p - a*d) / s
    convT: input i writes output o = i*s - p + a*d (tap a)
    A tap counts when o is an integer in [0, n_out).
    """
    fan = np.zeros(n_in, dtype=np.int64)
    for i in range(n_in):
        for a in range(k):
            if kind == "conv":
                num = i + p - a * d
                if num % s == 0 and 0 <= num // s < n_out:
                    fan[i] += 1
            else:
                o = i * s - p + a * d
                if 0 <= o < n_out:
                    fan[i] += 1
    return fan


def fanout_map(spec: LayerSpec) -> np.ndarray:
    """Outgoing connections of one event at each input position, per input channel.

    [H, W] int64 for a conv ((taps reaching a real output) x output channels
    of its group); [1] for a Linear (out_features).
    """
    if spec.kind == "linear":
        return np.array([spec.out_shape[0]], dtype=np.int64)
    fh = fanout_1d(spec.kind, spec.in_shape[1], spec.out_shape[1], spec.kernel[0],
                   spec.stride[0], spec.padding[0], spec.dilation[0])
    fw = fanout_1d(spec.kind, spec.in_shape[2], spec.out_shape[2], spec.kernel[1],
                   spec.stride[1], spec.padding[1], spec.dilation[1])
    return np.outer(fh, fw) * (spec.out_channels // spec.groups)


def dense_macs(spec: LayerSpec) -> int:
    """MACs of one dense pass of one sample: every connection that exists."""
    fm = fanout_map(spec)
    return int(fm.sum()) * spec.in_channels


def padded_macs(spec: LayerSpec) -> int:
    """The conventional count, padding taps included (conv: k*k*Cin/g*Cout*Ho*Wo;
    convT: k*k*Cin*Cout/g*H*W)."""
    if spec.kind == "linear":
        return spec.in_shape[0] * spec.out_shape[0]
    kk = spec.kernel[0] * spec.kernel[1]
    if spec.kind == "conv":
        return kk * spec.in_channels // spec.groups * int(np.prod(spec.out_shape))
    return kk * spec.out_channels // spec.groups * int(np.prod(spec.in_shape))


# ----------------------------------------------------------------- counts

@dataclass
class LayerCounts:
    """Operation counts of one layer, summed over the batches/calls recorded."""
    samples: int = 0          # sample passes: images x calls (B per call, summed)
    steps: int = 0            # time steps x samples the layer was fed
    events: int = 0           # input spikes (nonzero inputs) of a spike-fed layer
    input_slots: int = 0      # input entries x steps (events / input_slots = input rate)
    synops: int = 0           # accumulates triggered by spikes (AC)
    macs: int = 0             # MACs of an analog-fed layer, at every step it is fed
    macs_once: int = 0        # the same, a static input computed once per sample
    neuron_updates: int = 0   # neurons x steps
    active: int = 0           # neuron updates with a spike
    nonbinary: int = 0        # input entries that are neither 0 nor 1 (should stay 0)

    def __add__(self, other: "LayerCounts") -> "LayerCounts":
        return LayerCounts(*(getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)))

    def scaled(self, div: float) -> dict:
        return {f.name: getattr(self, f.name) / div for f in dataclasses.fields(self)}

    @property
    def firing_rate(self) -> float:
        return self.active / self.neuron_updates if self.neuron_updates else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["firing_rate"] = self.firing_rate
        return d


def _events(x: torch.Tensor) -> torch.Tensor:
    return (x != 0)


def count_layer(spec: LayerSpec, x: torch.Tensor, *, out_spikes: torch.Tensor | None = None,
                T: int | None = None) -> LayerCounts:
    """Counts of one layer for one recorded input.

    spike-fed layer: x = [T, B, *in_shape] spikes, or [B, *in_shape] the same
    spikes at each of T steps (give T).
    analog-fed layer: x = [B, *in_shape] fed unchanged at T steps (give T), or
    [T, B, *in_shape] fed step by step.
    out_spikes: [T, B, *out_shape] spikes of the neurons after the synapse.
    """
    nd = len(spec.in_shape)
    c = LayerCounts()
    if spec.analog:
        if x.dim() == nd + 1:
            if T is None:
                raise ValueError(f"{spec.name}: a static analog input needs T")
            B, steps, once = x.shape[0], T, 1
        elif x.dim() == nd + 2:
            steps, B = x.shape[0], x.shape[1]
            once = 1 if bool((x == x[:1]).all()) else steps
        else:
            raise ValueError(f"{spec.name}: input shape {tuple(x.shape)} does not match {spec.in_shape}")
        _check_shape(spec, x.shape[-nd:])
        dm = dense_macs(spec)
        c.macs, c.macs_once = dm * B * steps, dm * B * once
        c.samples, c.steps = B, B * steps
    else:
        if x.dim() == nd + 1 and T is not None:  # a static spike grid, sent at every step
            x = x.unsqueeze(0).expand(T, *x.shape)
        if x.dim() != nd + 2:
            raise ValueError(f"{spec.name}: spikes must be [T, B, {spec.in_shape}], got {tuple(x.shape)}")
        _check_shape(spec, x.shape[2:])
        steps, B = x.shape[0], x.shape[1]
        ev = _events(x)
        c.nonbinary = int(((x != 0) & (x != 1)).sum())
        c.events = int(ev.sum())
        c.input_slots = x.numel()
        fm = torch.from_numpy(fanout_map(spec))
        if spec.kind == "linear":
            c.synops = c.events * int(fm[0])
        else:
            per_pos = ev.sum(dim=(0, 1, 2), dtype=torch.int64)   # [H, W]
            c.synops = int((per_pos * fm).sum())
        c.samples, c.steps = B, B * steps
    if out_spikes is not None:
        if not spec.has_neurons:
            raise ValueError(f"{spec.name} has no neurons")
        _check_shape(spec, out_spikes.shape[2:], out=True)
        c.neuron_updates = out_spikes.numel()
        c.active = int(_events(out_spikes).sum())
    return c


def _check_shape(spec: LayerSpec, shape, out: bool = False) -> None:
    want = spec.out_shape if out else spec.in_shape
    if tuple(shape) != tuple(want):
        raise ValueError(f"{spec.name}: recorded {'output' if out else 'input'} shape "
                         f"{tuple(shape)} != layer's {tuple(want)}")


def count_recording(specs, inputs: dict, outputs: dict | None = None, *,
                    T: int | dict | None = None) -> dict[str, LayerCounts]:
    """Counts for a whole recording.

    specs: LayerSpecs (list or name -> spec). inputs: layer name -> input
    ([T, B, ...] spikes, or a static analog [B, ...]); outputs: layer name ->
    [T, B, ...] spikes of the LIF population after that synapse. T: the number
    of steps a static analog input is fed (one int, or per layer name).
    Layers absent from `inputs` are skipped.
    """
    specs = specs if isinstance(specs, dict) else {s.name: s for s in specs}
    outputs = outputs or {}
    unknown = set(inputs) - set(specs) | set(outputs) - set(specs)
    if unknown:
        raise KeyError(f"no layer named {sorted(unknown)}; known: {sorted(specs)}")
    res = {}
    for name, x in inputs.items():
        t = T.get(name) if isinstance(T, dict) else T
        res[name] = count_layer(specs[name], torch.as_tensor(x), T=t,
                                out_spikes=None if outputs.get(name) is None
                                else torch.as_tensor(outputs[name]))
    for name, y in outputs.items():
        if name not in inputs:
            c = LayerCounts()
            y = torch.as_tensor(y)
            c.neuron_updates, c.active = y.numel(), int(_events(y).sum())
            res[name] = c
    return res


# ------------------------------------------------ independent brute force

def brute_force_synops(spec: LayerSpec, x: torch.Tensor) -> int:
    """The same count by convolving the event maps with all-ones kernels.

    Each output of an all-ones conv counts the (input event, tap) pairs that
    reach it; summing over outputs and output channels counts every (event,
    output) connection once. Independent of `fanout_map`'s index arithmetic.
    Done in float64 per group of channels (exact below 2^53).
    """
    ev = _events(x).to(torch.float64)
    if spec.kind == "linear":
        return int((ev.reshape(-1, spec.in_shape[0]).sum(0)
                    @ torch.ones(spec.in_shape[0], spec.out_shape[0], dtype=torch.float64)).sum())
    ev = ev.reshape(-1, *spec.in_shape)                 # [T*B, C, H, W]
    g = spec.groups
    cpg = spec.in_channels // g
    kw = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=g)
    if spec.kind == "conv":
        w = torch.ones(g, cpg, *spec.kernel, dtype=torch.float64)
        y = F.conv2d(ev, w, **kw)
    else:
        w = torch.ones(spec.in_channels, 1, *spec.kernel, dtype=torch.float64)
        y = F.conv_transpose2d(ev, w, output_padding=spec.output_padding, **kw)
    if tuple(y.shape[2:]) != tuple(spec.out_shape[1:]):
        raise AssertionError(f"{spec.name}: brute-force output {tuple(y.shape[2:])} "
                             f"!= {spec.out_shape[1:]}")
    # y has one channel per group, each of its out_channels/g channels sees the same.
    return int(round(float(y.sum()))) * (spec.out_channels // g)


# ----------------------------------------------------------- the model

def model_layers(model) -> list[LayerSpec]:
    """LayerSpecs of every synapse layer of a SpikingDiffusion, in data-flow order."""
    vq, den = model.vq, model.denoiser
    C, S = model.channels, model.image_size
    specs = []
    shape = (C, S, S)
    for i, layer in enumerate(vq.encoder):
        s = spec_of(layer.synapse, f"encoder.{i}", "encoder", shape, analog=i == 0,
                    has_neurons=True, note="image currents, repeated over T" if i == 0 else "")
        specs.append(s)
        shape = s.out_shape
    g = model.grid
    s = spec_of(vq.spike_generator.synapse, "spike_generator", "spike_generator",
                (vq.cfg.code_dim, *g), analog=True, has_neurons=True,
                note="real-valued code vectors, repeated over T")
    specs.append(s)
    shape = s.out_shape
    for i, layer in enumerate(vq.decoder):
        s = spec_of(layer.synapse, f"decoder.{i}", "decoder", shape, analog=False, has_neurons=True)
        specs.append(s)
        shape = s.out_shape
    specs.append(spec_of(vq.readout, "decoder.readout", "decoder", shape, analog=False,
                         has_neurons=False, note="analog readout; PSP over T + tanh on host"))
    cin = den.layers[0].synapse.in_channels
    shape = (cin, *g)
    first = None
    for i, layer in enumerate(den.layers):
        first_note = ("one-hot token + step spikes (2 per position), repeated over T"
                      if den.spike_input else
                      f"analog input current ({den.cfg.token_input}), repeated over T")
        s = spec_of(layer.synapse, f"denoiser.{i}", "denoiser", shape,
                    analog=i == 0 and not den.spike_input, has_neurons=True,
                    note=first_note if i == 0 else "", one_hot=i == 0 and den.spike_input)
        specs.append(s)
        first = first or s.out_shape
        shape = s.out_shape
    specs.append(spec_of(den.head, "denoiser.head", "denoiser",
                         (shape[0] + first[0], *g), analog=False, has_neurons=False,
                         note="concat(last, first) spikes -> logits; mean over T on host"))
    return specs


def layer_weights(model) -> dict[str, torch.Tensor]:
    """Each synapse layer's weights as a chip holds them (batch norm folded in,
    float64), by the names of model_layers: what fixed point must represent."""
    from spikediff.fold import bn_fold
    vq, den = model.vq, model.denoiser
    layers = {f"encoder.{i}": m for i, m in enumerate(vq.encoder)}
    layers["spike_generator"] = vq.spike_generator
    layers.update({f"decoder.{i}": m for i, m in enumerate(vq.decoder)})
    layers.update({f"denoiser.{i}": m for i, m in enumerate(den.layers)})
    out = {}
    for name, layer in layers.items():
        w = layer.synapse.weight.detach().double()
        scale, _ = bn_fold(layer.bn)
        cout_dim = 1 if isinstance(layer.synapse, nn.ConvTranspose2d) else 0
        shape = [1] * w.dim()
        shape[cout_dim] = -1
        out[name] = w * scale.view(shape)
    out["decoder.readout"] = vq.readout.weight.detach().double()
    out["denoiser.head"] = den.head.weight.detach().double()
    return out


@dataclass
class Tally:
    """Running per-layer counts, filled by `Recorder` or by hand."""
    counts: dict = field(default_factory=dict)       # name -> LayerCounts
    calls: dict = field(default_factory=dict)        # component -> number of (batched) calls
    brute: dict = field(default_factory=dict)        # name -> brute-force synops (verify mode)

    def add(self, name: str, c: LayerCounts) -> None:
        self.counts[name] = self.counts.get(name, LayerCounts()) + c

    def add_recording(self, specs, inputs: dict, outputs: dict | None = None, *,
                      T: int | dict | None = None, verify: bool = False) -> dict:
        """count_recording(...) of one recorded batch/call, added to the running totals.

        For other back ends (e.g. Lava): call once per denoiser call, per spike
        generator + decoder pass and per encoder batch, with spikes aligned to
        the reference time steps ([T, B, ...], the synapse delay removed).
        """
        specs = specs if isinstance(specs, dict) else {s.name: s for s in specs}
        res = count_recording(specs, inputs, outputs, T=T)
        for name, c in res.items():
            self.add(name, c)
            if verify and name in inputs and not specs[name].analog:
                self.brute[name] = (self.brute.get(name, 0)
                                    + brute_force_synops(specs[name], torch.as_tensor(inputs[name])))
        for comp in {specs[n].component for n in inputs}:
            self.calls[comp] = self.calls.get(comp, 0) + 1
        return res


class Recorder:
    """Forward hooks on a SpikingDiffusion's real layers; counts as the model runs.

    Hooks sit on every SpikingConv's synapse (its real input) and LIF (its
    real output spikes), on the decoder readout and on the denoiser head's
    spike input. Nothing of the model is re-implemented: run encode_spikes /
    model.generate as usual inside `with Recorder(model) as rec:` and read
    `rec.tally`.
    Counting happens inside the hooks so long runs need no memory for spikes.
    verify=True also counts every spike-fed layer by the brute-force method.
    """

    def __init__(self, model, *, verify: bool = False, tally: Tally | None = None):
        self.model = model
        self.specs = {s.name: s for s in model_layers(model)}
        self.verify = verify
        self.tally = tally or Tally()
        self._handles = []
        self.enabled = {c: True for c in COMPONENTS}

    def _modules(self):
        vq, den = self.model.vq, self.model.denoiser
        out = []
        for i, layer in enumerate(vq.encoder):
            out.append((f"encoder.{i}", layer, vq.cfg.T))
        out.append(("spike_generator", vq.spike_generator, vq.cfg.T))
        for i, layer in enumerate(vq.decoder):
            out.append((f"decoder.{i}", layer, vq.cfg.T))
        out.append(("decoder.readout", vq.readout, vq.cfg.T))
        for i, layer in enumerate(den.layers):
            out.append((f"denoiser.{i}", layer, den.cfg.T))
        # The head runs once on the spikes' mean over T (denoiser.py); a chip
        # runs it at every step, so it is counted from its spike input.
        out.append(("denoiser.head", den.head_input, den.cfg.T))
        return out

    def __enter__(self):
        for name, mod, T in self._modules():
            spec = self.specs[name]
            syn = getattr(mod, "synapse", mod)
            self._handles.append(syn.register_forward_hook(self._input_hook(spec, T)))
            if hasattr(mod, "lif"):
                self._handles.append(mod.lif.register_forward_hook(self._output_hook(spec)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _input_hook(self, spec: LayerSpec, T: int):
        def hook(_mod, args, _out):
            if not self.enabled[spec.component]:
                return
            x = args[0].detach()
            if spec.analog:
                c = count_layer(spec, x, T=T)       # static [B, ...], fed at T steps
            else:
                # A synapse's input has time folded into the batch; the head's tap has
                # not; a static spike grid (the folded denoiser input) is sent at T steps.
                if x.dim() == len(spec.in_shape) + 1:
                    x = (x.unsqueeze(0).expand(T, *x.shape) if spec.one_hot
                         else x.reshape(T, x.shape[0] // T, *x.shape[1:]))
                c = count_layer(spec, x)
                if self.verify:
                    self.tally.brute[spec.name] = (self.tally.brute.get(spec.name, 0)
                                                   + brute_force_synops(spec, x))
            self.tally.add(spec.name, c)
            if spec.name in ("encoder.0", "spike_generator", "denoiser.0"):
                self.tally.calls[spec.component] = self.tally.calls.get(spec.component, 0) + 1
        return hook

    def _output_hook(self, spec: LayerSpec):
        def hook(_mod, _args, out):
            if not self.enabled[spec.component]:
                return
            c = LayerCounts()
            _check_shape(spec, out.shape[2:], out=True)
            c.neuron_updates, c.active = out.numel(), int(_events(out).sum())
            self.tally.add(spec.name, c)
        return hook
