"""Generation back ends behind one interface: norse (PyTorch), nir (re-imported graph), lava.

Every back end provides

* ``denoise(tokens, t) -> logits``  for :func:`spikediff.diffusion.sample_tokens`
  (the host keeps the random draws, softmax and reveal schedule);
* ``decode(codes) -> images`` in [0, 1] (spike generator + decoder; the host does
  only the one-hot input and the final ``tanh(pixel_shuffle(.))`` readout);
* ``denoise_record`` / ``decode_record``: the same plus per-layer spike trains
  ``{node: [T, B, *shape]}`` aligned to the reference time steps, keyed by the
  NIR node names of the exported graph (``layers.0.lif`` ... for the denoiser,
  ``spike_generator.lif``, ``decoder.0.lif`` ... for the decoder, the decoder
  maps in the export's phase-stacked layout), so back ends compare entry by entry.

The Lava back end runs every spiking layer as Lava processes through the NIR file
(``hardware.lava.client.LavaWorker``, Python 3.10 process); the worker caches the
built process graphs, so the denoiser graph is built once and reused at every
diffusion step.

The Norse back end runs in float64 by default (``dtype``): the export folds batch
norm and re-arranges the transposed convolutions, which only give bit-identical
currents at float64; ``dtype=torch.float32`` runs the model as trained.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hardware import BACKENDS, LAVA_MODES
from spikediff.errors import SpikediffError


class BackendError(SpikediffError):
    pass




def _to_phases(x: torch.Tensor, p: int) -> torch.Tensor:
    """[T, B, C, p*h, p*w] -> [T, B, C*p*p, h, w] (the export's pixel_unshuffle order)."""
    if p == 1:
        return x
    y = F.pixel_unshuffle(x.flatten(0, 1), p)
    return y.view(x.shape[0], x.shape[1], *y.shape[1:])


def from_phases(x: torch.Tensor, p: int) -> torch.Tensor:
    """[T, B, C*p*p, h, w] -> [T, B, C, p*h, p*w]: a decoder layer's spikes in the
    export's phase-stacked layout back at full resolution (the inverse of _to_phases)."""
    if p == 1:
        return x
    y = F.pixel_shuffle(x.flatten(0, 1), p)
    return y.view(x.shape[0], x.shape[1], *y.shape[1:])


class Backend:
    name = "?"
    dtype = torch.float64

    def __init__(self):
        self.timing = {"denoise_s": 0.0, "denoise_calls": 0, "decode_s": 0.0, "decode_calls": 0,
                       "time_steps": 0}

    # subclasses: _denoise(tokens, t, record) -> (logits, spikes|None)
    #             _decode(codes, record) -> (images, spikes|None)
    def denoise(self, tokens, t):
        return self.denoise_record(tokens, t, record=False)[0]

    def decode(self, codes):
        return self.decode_record(codes, record=False)[0]

    def denoise_record(self, tokens, t, record=True):
        t0 = time.perf_counter()
        out = self._denoise(tokens, t, record)
        self.timing["denoise_s"] += time.perf_counter() - t0
        self.timing["denoise_calls"] += 1
        return out

    def decode_record(self, codes, record=True):
        t0 = time.perf_counter()
        out = self._decode(codes, record)
        self.timing["decode_s"] += time.perf_counter() - t0
        self.timing["decode_calls"] += 1
        return out

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NorseBackend(Backend):
    """The PyTorch/Norse model itself."""
    name = "norse"

    def __init__(self, model, dtype=torch.float64):
        super().__init__()
        from export.nir_exec import double_precision
        self.dtype = dtype
        self.model = double_precision(model) if dtype == torch.float64 else copy.deepcopy(model).eval()
        self.T_den, self.T_vq = model.denoiser.cfg.T, model.vq.cfg.T

    @torch.no_grad()
    def _denoise(self, tokens, t, record):
        den = self.model.denoiser
        spikes = den.spikes(tokens, t)
        logits = den.readout(spikes)
        self.timing["time_steps"] += self.T_den
        rec = {f"layers.{i}.lif": s for i, s in enumerate(spikes)} if record else None
        return logits.to(torch.float64), rec

    @torch.no_grad()
    def _decode(self, codes, record):
        vq = self.model.vq
        asg = vq.generate_spikes_idx(codes)
        dec = vq.decode_spikes(asg)
        img = (vq.readout_image(dec[-1]) + 1) / 2
        self.timing["time_steps"] += self.T_vq
        rec = None
        if record:
            rec = {"spike_generator.lif": asg}
            for i, s in enumerate(dec):
                rec[f"decoder.{i}.lif"] = _to_phases(s, 2 ** (i + 1))
        return img.to(torch.float64), rec


class NirBackend(Backend):
    """The re-imported NIR graph, run by export.nir_exec (torch, float64)."""
    name = "nir"

    def __init__(self, nir_path):
        super().__init__()
        from export.nir_exec import Exported
        self.ex = Exported.read(nir_path)

    @torch.no_grad()
    def _denoise(self, tokens, t, record):
        vals = self.ex.denoiser_run(tokens, t)
        self.timing["time_steps"] += self.ex.T_den
        rec = ({k: v for k, v in vals.items() if k.endswith(".lif")} if record else None)
        return vals["output"][-1], rec

    @torch.no_grad()
    def _decode(self, codes, record):
        vals = self.ex.decoder_run(codes)
        self.timing["time_steps"] += self.ex.T_vq
        rec = ({k: v for k, v in vals.items() if k.endswith(".lif")} if record else None)
        return self.ex.image_from_phases(vals["output"][-1]), rec


class LavaBackend(Backend):
    """Every spiking layer as Lava processes (via the NIR file, in the Lava worker)."""
    name = "lava"

    def __init__(self, nir_path, mode="floating_pt", *, record_layers=True, worker=None,
                 python=None, timeout=600.0, weights="single", scales="frozen",
                 calibration=None):
        super().__init__()
        self._open(nir_path, mode, record_layers, weights, scales, calibration)
        from hardware.lava import client
        self.own = worker is None
        try:
            # three graphs (encoder, decoder, denoiser) stay built in the worker
            self.worker = worker or client.LavaWorker(
                python=python, timeout=timeout, env={"SPIKEDIFF_LAVA_CACHE": "4"}).start()
        except client.LavaUnavailableError as e:
            raise BackendError(str(e)) from None
        except client.LavaWorkerError as e:
            raise BackendError(str(e)) from None
        self.lava_s = 0.0
        self.last_timing = {}
        self.lags = {}      # "subgraph/node" -> Lava steps of delay (synapse layers)

    def _open(self, nir_path, mode, record_layers, weights, scales="frozen", calibration=None):
        from export.fixed_point import WEIGHT_MODES
        from export.nir_exec import Exported
        from hardware.calibration import SCALES
        if mode not in LAVA_MODES:
            raise BackendError(f"--lava-mode must be one of {', '.join(LAVA_MODES)}, got {mode!r}")
        if weights not in WEIGHT_MODES:
            raise BackendError(f"--lava-weights must be one of {', '.join(WEIGHT_MODES)}, "
                               f"got {weights!r}")
        if scales not in SCALES:
            raise BackendError(f"--lava-scales must be one of {', '.join(SCALES)}, "
                               f"got {scales!r}")
        # fixed point: "frozen" scales from one calibration per subgraph (what a
        # chip holds; hardware/calibration.py) or "per-call" re-calibration
        self.scales = scales if mode == "fixed_pt" else None
        self.calibration, self.calibration_notes = {}, []
        self.input_clipped = 0
        self.path, self.mode, self.weights = str(Path(nir_path).resolve()), mode, weights
        self.ex = Exported.read(self.path)
        den, dec = self.ex.graph.nodes["denoiser"], self.ex.graph.nodes["decoder"]
        self.den_lifs = [n for n, v in den.nodes.items() if type(v).__name__ == "LIF"]
        self.dec_lifs = [n for n, v in dec.nodes.items() if type(v).__name__ == "LIF"]
        self.record_layers = record_layers
        if mode == "fixed_pt" and weights == "single":
            check_fit(self.path)
        if calibration is not None and self.scales == "frozen":
            self.set_calibration(calibration)

    def plan(self, path, subgraph):
        from hardware.emulator import host_plan
        return host_plan(path, subgraph)

    def set_calibration(self, doc: dict, note: str | None = None):
        """Freeze the scales of the subgraphs a calibration document holds
        (hardware.calibration), each checked against the graph first."""
        from hardware.lava.worker.plan import MappingError
        from hardware.lava.worker.quantise import check_calibration
        for sub, cal in doc["subgraphs"].items():
            if sub not in ("denoiser", "decoder"):
                raise BackendError(f"calibration: {sub!r} is not a part this back end runs "
                                   "(denoiser, decoder)")
            try:
                check_calibration(self.plan(self.path, sub), cal, f"calibration of the {sub}")
            except MappingError as e:
                raise BackendError(str(e)) from None
            self.calibration[sub] = cal
        self.calibration_notes.append(note or f"scales frozen from a calibration of "
                                      f"{doc.get('calibration_set', 'unknown data')}")

    def frozen_calibration(self, key, path, subgraph, x):
        """The calibration a call of this subgraph runs with: None in per-call mode
        (and floating_pt); frozen without one yet: calibrated on this first call."""
        if self.scales != "frozen":
            return None
        if key not in self.calibration:
            from hardware.calibration import first_call
            self.calibration[key] = first_call(self.plan(path, subgraph), {"input": x})
            self.calibration_notes.append(f"note: {key} scales frozen from its first call "
                                          f"(batch {x.shape[1]}) alone")
        return self.calibration[key]

    def fixed_point_report(self) -> dict | None:
        """Frozen or per-call scales, how they were calibrated, and the values the
        fixed-point ranges did not hold (None: not counted by this back end)."""
        if self.scales is None:
            return None
        return {"scales": self.scales, "calibration": self.calibration_notes,
                "input_clipped": self.input_clipped, "a_in_over": None, "v_clipped": None}

    def run(self, subgraph, x, record):
        from hardware.lava import client
        xn = x.numpy()
        cal = self.frozen_calibration(subgraph, self.path, subgraph, xn)
        try:
            res = self.worker.run(self.path, subgraph, {"input": xn}, self.mode, record,
                                  weights=self.weights, calibration=cal)
        except client.LavaWorkerError as e:
            raise BackendError(f"Lava ({subgraph}): {e}") from None
        self.input_clipped += res.input_clipped
        self.last_timing = dict(res.timing)
        self.lags.update({f"{subgraph}/{k}": int(v) for k, v in res.lags.items()})
        self.lava_s += float(res.timing.get("run_s", res.timing.get("first_run_s", 0.0)))
        self.timing["time_steps"] += int(res.steps)
        return res

    @torch.no_grad()
    def _denoise(self, tokens, t, record):
        x = self.ex.denoiser_input(tokens, t)
        names = self.den_lifs if self.record_layers else []
        res = self.run("denoiser", x, names + ["output"])
        out = {"output": torch.from_numpy(res.aligned("output").astype("float64"))}
        logits = self.ex.read_out("denoiser", out)  # full or spiking form
        rec = ({n: torch.from_numpy(res.aligned(n).astype("float64")) for n in names}
               if record else None)
        if record and not names:
            raise BackendError("LavaBackend(record_layers=False) cannot return layer spikes")
        return logits, rec

    @torch.no_grad()
    def _decode(self, codes, record):
        x = self.ex.decoder_input(codes)
        names = self.dec_lifs if self.record_layers else []
        res = self.run("decoder", x, names + ["output"])
        out = {"output": torch.from_numpy(res.aligned("output").astype("float64"))}
        phases = self.ex.read_out("decoder", out)
        rec = ({n: torch.from_numpy(res.aligned(n).astype("float64")) for n in names}
               if record else None)
        return self.ex.image_from_phases(phases), rec

    def encode_record(self, images01):
        """Encoder spike layers on Lava: {encoder.i.lif: [T, B, C, H, W]} (aligned).

        The encoder's feature read-out (an LI and an I read-out summing into one
        Output) is not a Lava neuron output, so the encoder runs as its spiking
        view (export.nir_exec.spiking_view: cut after the last LIF), written once
        beside the NIR file; the feature and nearest-code search stay host-side.
        """
        import nir

        from export.nir_exec import spiking_view
        if getattr(self, "_enc_path", None) is None:
            d = tempfile.mkdtemp(prefix="spikediff-enc-")
            self._enc_path = os.path.join(d, "encoder_spikes.nir")
            view = spiking_view(self.ex.graph.nodes["encoder"])
            view.metadata["T"] = int(self.ex.T_vq)
            nir.write(self._enc_path, view)
            self._enc_names = [k for k, v in view.nodes.items() if type(v).__name__ == "LIF"]
        x = (images01.to(torch.float64) - 0.5).unsqueeze(0).expand(self.ex.T_vq, *images01.shape)
        xn = x.contiguous().numpy()
        cal = self.frozen_calibration("encoder", self._enc_path, None, xn)
        from hardware.lava import client
        try:
            res = self.worker.run(self._enc_path, None, {"input": xn},
                                  self.mode, self._enc_names, weights=self.weights,
                                  calibration=cal)
        except client.LavaWorkerError as e:
            raise BackendError(f"Lava (encoder): {e}") from None
        self.input_clipped += res.input_clipped
        self.lava_s += float(res.timing.get("run_s", res.timing.get("first_run_s", 0.0)))
        self.lags.update({f"encoder/{k}": int(v) for k, v in res.lags.items()})
        return {n: torch.from_numpy(res.aligned(n).astype("float64")) for n in self._enc_names}

    def close(self):
        if getattr(self, "_enc_path", None):
            import shutil
            shutil.rmtree(os.path.dirname(self._enc_path), ignore_errors=True)
            self._enc_path = None
        if self.own and getattr(self, "worker", None) is not None:
            self.worker.close()
            self.worker = None


def check_fit(nir_path):
    """Refuse one 8-bit weight per synapse for a NIR file whose denoiser or
    decoder weights do not fit it (the error names the layers and the fixes),
    before any Lava process starts."""
    from hardware.emulator import host_plan
    from hardware.lava.worker.plan import MappingError
    from hardware.lava.worker.quantise import check_fits
    for sub in ("denoiser", "decoder"):
        try:
            check_fits(host_plan(nir_path, sub), f"{sub} of {nir_path}")
        except MappingError as e:
            raise BackendError(str(e)) from None


class _Aligned(dict):
    """The emulator's records, already aligned, behind LavaResult's interface."""

    def __init__(self, arrays, steps):
        super().__init__(arrays)
        self.steps, self.timing = steps, {}

    def aligned(self, name):
        return self[name]


class EmulatorBackend(LavaBackend):
    """Lava fixed_pt, bit for bit, in torch (hardware.emulator): the same
    mapping and calibration as the Lava back end, no Lava process."""
    name = "emulator"

    def __init__(self, nir_path, *, record_layers=True, weights="single", scales="frozen",
                 calibration=None):
        Backend.__init__(self)
        self._open(nir_path, "fixed_pt", record_layers, weights, scales, calibration)
        from hardware.emulator import Emulator
        self.emu = Emulator(weights=weights)
        self.lava_s = 0.0
        self.last_timing = {}
        self.lags = {}
        self.own, self.worker = False, None

    def run(self, subgraph, x, record):
        from hardware.lava.worker.plan import MappingError
        xn = x.numpy()
        try:
            cal = self.frozen_calibration(subgraph, self.path, subgraph, xn)
            out = self.emu.run(self.path, subgraph, {"input": xn}, record, calibration=cal)
        except MappingError as e:
            raise BackendError(f"emulator ({subgraph}): {e}") from None
        self.timing["time_steps"] += int(x.shape[0])
        return _Aligned(out, int(x.shape[0]))

    def fixed_point_report(self) -> dict:
        rep = super().fixed_point_report()
        nets = list(self.emu.frozen.values()) + list(self.emu.nets.values())
        for k in ("input_clipped", "a_in_over", "v_clipped"):
            rep[k] = sum(getattr(n, k) for n in nets)
        return rep

    def encode_record(self, images01):
        raise BackendError("the emulator back end generates; encoding runs on Lava or Norse")


class _BackendVQ:
    """vq.decode(token grids) through a back end (what spikediff eval calls)."""

    def __init__(self, backend):
        self.backend = backend

    def to(self, device):
        return self

    def eval(self):
        return self

    def decode(self, tokens):
        return self.backend.decode(tokens.cpu()).float()


class BackendModel:
    """A model whose generate() and vq.decode() run through a back end: what
    `spikediff eval --backend emulator` samples from (the host's draws and
    reveal schedule are the model's own, diffusion.sample_tokens)."""

    def __init__(self, model, backend, tag: str, name: str):
        self.model, self.backend, self.backend_tag, self.backend_name = model, backend, tag, name
        self.config, self.denoiser = model.config, model.denoiser
        self.diffusion_steps, self.grid = model.diffusion_steps, model.grid
        self.vq = _BackendVQ(backend)

    def to(self, device):
        return self

    def eval(self):
        return self

    @torch.no_grad()
    def generate(self, n, *, temperature=None, steps=None, generator=None, device="cpu",
                 on_step=None, refine=None):
        from spikediff.diffusion import sample_tokens
        d = self.config.diffusion
        if not self.backend.calibration.keys() >= {"denoiser", "decoder"}:
            # frozen scales: calibrated once, on a float generation like the first batch
            calibrate(self.backend, n, grid=self.grid, mask_id=self.denoiser.mask_id,
                      diffusion_steps=self.diffusion_steps, steps=steps,
                      temperature=d.temperature if temperature is None else temperature,
                      refine=d.refinement() if refine is None else refine)
        tokens = sample_tokens(self.backend.denoise, n, self.grid, self.denoiser.mask_id,
                               self.diffusion_steps, steps,
                               d.temperature if temperature is None else temperature, generator,
                               "cpu", on_step, d.refinement() if refine is None else refine)
        return self.vq.decode(tokens), tokens


def emulated(model, weights: str = "single", scales: str = "frozen") -> "BackendModel":
    """The model as Lava fixed_pt runs it (the emulator on its NIR export)."""
    tmp = TempNir(model)
    backend = EmulatorBackend(tmp.path, record_layers=False, weights=weights, scales=scales)
    backend._tmp = tmp   # the export lives as long as the back end
    return BackendModel(model, backend, f"-emulator-{weights}-{scales}",
                        f"the Lava fixed_pt emulator ({weights} 8-bit weights, {scales} scales)")


class FloatPlanBackend(EmulatorBackend):
    """A back end whose calls run the plan's float network (emulator.FloatRun:
    what per-call calibration runs at each call) and keep the largest currents
    and input ranges each subgraph meets: a calibration set's measurement."""
    name = "float calibration"

    def __init__(self, nir_path):
        super().__init__(nir_path, record_layers=False, weights="split", scales="per-call")
        self.runs, self.found = {}, {}

    def run(self, subgraph, x, record):
        from hardware.emulator import FloatRun
        from hardware.lava.worker.quantise import input_ranges, merge_calibration
        plan = self.emu.plan(self.path, subgraph)
        fr = self.runs.setdefault(subgraph, FloatRun(plan))
        inputs = {"input": x.numpy()}
        vals = {}
        obs = fr.observed(inputs, strict=False, outputs=vals)
        cal = {"input_range": input_ranges(inputs),
               "observed": {k: list(v) for k, v in obs.items()}}
        self.found[subgraph] = merge_calibration(cal, self.found.get(subgraph))
        T, B = x.shape[:2]
        out = {}
        for r in record:
            base = plan.alias.get(r, r)
            out[r] = vals[base].permute(1, 2, 0).reshape(T, B, *plan.pops[base].shape).numpy()
        return _Aligned(out, int(T))


@torch.no_grad()
def measure(nir_path, n: int, *, grid, mask_id: int, diffusion_steps: int, steps=None,
            temperature=1.0, seed=0, refine=None) -> dict:
    """The calibration of a float generation of n images (seed, steps as given):
    a calibration document (hardware.calibration) for the denoiser and decoder."""
    from hardware.calibration import document
    fb = FloatPlanBackend(nir_path)
    generate(fb, n, grid=grid, mask_id=mask_id, diffusion_steps=diffusion_steps, steps=steps,
             temperature=temperature, seed=seed, refine=refine)
    return document(fb.found, f"float generation of {n} image(s), {steps or diffusion_steps} "
                    f"steps, seed {seed}, temperature {temperature:g}")


def calibrate(backend, n: int, *, grid, mask_id, diffusion_steps, steps=None, temperature=1.0,
              seed=0, refine=None) -> None:
    """Frozen scales for a fixed-point back end without a calibration: measured
    on a float generation of n images (:func:`measure`), with a note saying so.
    Nothing to do for per-call scales or floating_pt."""
    if getattr(backend, "scales", None) != "frozen":
        return
    doc = measure(backend.path, n, grid=grid, mask_id=mask_id, diffusion_steps=diffusion_steps,
                  steps=steps, temperature=temperature, seed=seed, refine=refine)
    backend.set_calibration(doc, f"note: scales frozen from a calibration measured at the start "
                            f"of the run ({doc['calibration_set']})")
    backend.calibration_doc = doc


# -- building ----------------------------------------------------------------------
def export_to(model, path) -> str:
    """Write the model's NIR file (float64 parameters) to path; returns path."""
    import nir
    import numpy as np
    from export.nir_graph import build_graph, write
    write(build_graph(model, np.float64), path)
    return str(path)


class TempNir:
    """A temporary NIR export of a model (removed on close)."""

    def __init__(self, model):
        self.dir = tempfile.mkdtemp(prefix="spikediff-run-")
        self.path = export_to(model, os.path.join(self.dir, "model.nir"))

    def close(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


def make_backend(name, model=None, nir_path=None, *, mode="floating_pt", dtype=torch.float64,
                 record_layers=True, worker=None, weights="single", scales="frozen",
                 calibration=None):
    if name == "norse":
        if model is None:
            raise BackendError("the norse back end needs a checkpoint (--checkpoint)")
        return NorseBackend(model, dtype)
    if name == "nir":
        return NirBackend(nir_path)
    if name == "lava":
        return LavaBackend(nir_path, mode, record_layers=record_layers, worker=worker,
                           weights=weights, scales=scales, calibration=calibration)
    if name == "emulator":
        return EmulatorBackend(nir_path, record_layers=record_layers, weights=weights,
                               scales=scales, calibration=calibration)
    raise BackendError(f"unknown back end {name!r}; choose one of {', '.join(BACKENDS)}")


# -- generation and parity -------------------------------------------------------------
@torch.no_grad()
def generate(backend: Backend, n: int, *, grid, mask_id: int, diffusion_steps: int,
             steps=None, temperature=1.0, seed=0, progress=False, reference: Backend | None = None,
             refine=None):
    """Images and tokens through `backend`; with `reference`, a parity report as well.

    With a reference back end both see the same x_t at every diffusion step (the
    primary's), and the same host draws: before each draw the generator state is
    cloned to also draw from the reference's logits, to count differing proposals.
    """
    from spikediff.progress import bar as progress_bar

    from spikediff.diffusion import draw, sample_tokens

    g = torch.Generator().manual_seed(seed)
    S = steps or diffusion_steps
    par = Parity() if reference is not None else None
    bar = progress_bar(total=S + (refine.steps if refine else 0),
                       desc=f"diffusion steps ({backend.name})",
                       unit="step", show=progress, leave=False, dynamic_ncols=True)

    def denoise(tokens, t):
        if par is None:
            return backend.denoise(tokens, t)
        logits, rec = backend.denoise_record(tokens, t)
        rlogits, rrec = reference.denoise_record(tokens, t)
        par.add_spikes("denoiser", rec, rrec)
        par.add_values("logits", logits, rlogits)
        if temperature > 0:
            state = g.get_state()
            ga, gb = torch.Generator(), torch.Generator()
            ga.set_state(state)
            gb.set_state(state)
            a = draw(logits.float(), temperature, ga)
            b = draw(rlogits.float(), temperature, gb)
        else:
            a, b = logits.argmax(1), rlogits.argmax(1)
        par.proposals += int((a != b).sum())
        par.proposal_total += a.numel()
        return logits

    tokens = sample_tokens(denoise, n, grid, mask_id, diffusion_steps, steps, temperature, g,
                           on_step=lambda _: bar.update(1), refine=refine)
    bar.close()
    if par is None:
        return backend.decode(tokens), tokens, None
    images, rec = backend.decode_record(tokens)
    rimages, rrec = reference.decode_record(tokens)
    par.add_spikes("decoder", rec, rrec)
    par.add_values("image", images, rimages)
    return images, tokens, par


class Parity:
    """Per-layer spike agreement (aligned at each layer's lag) and value errors."""

    def __init__(self):
        self.layers = {}    # "part/node" -> {"n", "differ", "spikes_ref", "spikes"}
        self.values = {}    # name -> max abs diff
        self.proposals = 0
        self.proposal_total = 0

    def add_spikes(self, part, got, ref):
        for k in ref:
            a, b = got[k].to(torch.float64), ref[k].to(torch.float64)
            if a.shape != b.shape:
                raise BackendError(f"{part}/{k}: recorded shape {tuple(a.shape)} != "
                                   f"reference {tuple(b.shape)}")
            row = self.layers.setdefault(f"{part}/{k}", {"n": 0, "differ": 0, "spikes_ref": 0,
                                                         "spikes": 0})
            row["n"] += a.numel()
            row["differ"] += int((a != b).sum())
            row["spikes_ref"] += int(b.sum())
            row["spikes"] += int(a.sum())

    def add_values(self, name, got, ref):
        d = float((got.to(torch.float64) - ref.to(torch.float64)).abs().max())
        self.values[name] = max(self.values.get(name, 0.0), d)

    def to_dict(self):
        layers = [{"layer": k, "compared": v["n"], "differing": v["differ"],
                   "agreement": 1 - v["differ"] / max(v["n"], 1),
                   "spikes": v["spikes"], "spikes_reference": v["spikes_ref"]}
                  for k, v in self.layers.items()]
        return {"layers": layers,
                "max_abs_logit_diff": self.values.get("logits"),
                "max_abs_image_diff": self.values.get("image"),
                "differing_proposals": self.proposals, "proposals": self.proposal_total,
                "all_spikes_identical": all(v["differ"] == 0 for v in self.layers.values())}

    def format(self, lags=None):
        d = self.to_dict()
        lines = [f"  {'layer':30s} {'lag':>3s} {'compared':>10s} {'agree':>10s} {'differing':>9s} "
                 f"{'spikes':>9s}"]
        for r in d["layers"]:
            lag = "" if not lags else str(lags.get(r["layer"], ""))
            lines.append(f"  {r['layer']:30s} {lag:>3s} {r['compared']:10d} "
                         f"{100 * r['agreement']:9.4f}% {r['differing']:9d} {r['spikes']:9d}")
        lines.append(f"  max |logit diff| {d['max_abs_logit_diff']:.3g}   "
                     f"max |image diff| {d['max_abs_image_diff']:.3g}   "
                     f"differing draws {d['differing_proposals']}/{d['proposals']}")
        return "\n".join(lines)
