"""`spikediff-run`: generate images with the spiking layers on a chosen back end.

  spikediff-run --backend lava --checkpoint CKPT --n 4 --out grid.png
  spikediff-run --backend lava --steps 8 --compare --json parity.json
  spikediff-run --backend nir --nir model.nir --n 4 --out grid.png
  spikediff-run --backend emulator --checkpoint QAT_CKPT --n 64 --out grid.png

Back ends: norse (the PyTorch model), nir (the exported NIR graph re-imported and
run by export.nir_exec), lava (every spiking layer - the denoiser at each
diffusion step, the spike generator and the decoder - as Lava processes in the
Python 3.10 Lava environment, built from the NIR file), emulator (Lava's
fixed_pt arithmetic bit for bit in torch, hardware/emulator.py: the same
mapping, much faster). In fixed point each connection is one 8-bit synapse
(--lava-weights single, for checkpoints fine-tuned with [train] quantize =
"loihi8"; others are refused, naming the layers) or, explicitly, two
(--lava-weights split). The host does only what
the NIR metadata lists as host-side: one-hot inputs, softmax sampling and the
reveal schedule between denoiser calls, and the final tanh(pixel_shuffle(.)).

--compare runs the Norse model alongside on the same host-side draws (at each
diffusion step both get the same x_t) and prints per-layer spike agreement at
each layer's Lava lag, the largest logit difference, the number of differing
token draws and the largest image difference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from spikediff.cliutil import (ArgumentParser, add_checkpoint_args, add_random_weights_arg,
                               add_refine_args, pick_checkpoint,
                               check_outputs, count, handle_errors, nonneg, random_weights_model,
                               refine_settings, seed)
from spikediff.errors import SpikediffError


def build_parser() -> ArgumentParser:
    from . import BACKENDS, LAVA_MODES
    p = ArgumentParser(prog="spikediff-run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="lava")
    add_checkpoint_args(p)
    add_random_weights_arg(p)
    p.add_argument("--nir", help="an exported NIR file to run (default: export the checkpoint "
                   "to a temporary file)")
    p.add_argument("--n", type=count, default=4, help="images to generate (one batch)")
    p.add_argument("--out", help="write the images as a PNG grid here")
    p.add_argument("--steps", type=count, help="diffusion sampling steps (default: one per token)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--temperature", type=nonneg, help="softmax temperature, 0: always the "
                   "most likely token (default: the config's)")
    add_refine_args(p)
    p.add_argument("--lava-mode", choices=LAVA_MODES, default="floating_pt",
                   help="floating_pt (exact arithmetic) or fixed_pt (Loihi-like integers)")
    p.add_argument("--lava-weights", choices=("single", "split"), default="single",
                   help="fixed point (lava fixed_pt, emulator): one 8-bit weight per synapse "
                   "(default; needs a checkpoint fine-tuned with [train] quantize = \"loihi8\") "
                   "or split: each connection as two 8-bit synapses (~15-bit weights, twice "
                   "the synaptic memory and operations)")
    p.add_argument("--lava-scales", choices=("frozen", "per-call"), default="frozen",
                   help="fixed point: frozen (default; what a chip holds: every population's "
                   "scale fixed once from a calibration, --calibration or else a float "
                   "generation of this run's batch measured first) or per-call (re-calibrated "
                   "on a float run of every call's inputs)")
    p.add_argument("--calibration", metavar="FILE",
                   help="frozen scales from this calibration file (--save-calibration writes one)")
    p.add_argument("--save-calibration", metavar="FILE",
                   help="write the calibration the run's frozen scales came from")
    p.add_argument("--norse-dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the Norse model (default float64, what the float64 NIR "
                   "file and Lava floating_pt compute; float32 is the model as trained)")
    p.add_argument("--compare", action="store_true",
                   help="run Norse alongside on the same draws and print a parity report")
    p.add_argument("--json", help="write the run report (timings, parity) as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_model(a):
    from spikediff import checkpoint
    if a.random_weights:
        return random_weights_model(a), f"random weights ({a.random_weights})"
    pick_checkpoint(a)
    model = checkpoint.load_model(a.checkpoint)
    return model, a.checkpoint


def _nir_info(path):
    """(grid, mask_id, diffusion_steps, temperature, refinement, weights hash) from the
    NIR metadata."""
    from export.nir_graph import refinement_of
    import nir
    try:
        g = nir.read(str(path))
    except FileNotFoundError:
        raise SpikediffError(f"no NIR file at {path}") from None
    except Exception as e:
        raise SpikediffError(f"cannot read NIR file {path} ({type(e).__name__}: {e})") from None
    from export.nir_schema import PARTS, check
    parts = check(g, str(path))  # metadata against the graph, one line where they disagree
    if list(parts) != list(PARTS):
        raise SpikediffError(f"{path} holds only the {', '.join(parts)} part; generating "
                             "needs a whole export (spikediff-export --to nir without --part)")
    md, dmd = g.metadata, g.nodes["denoiser"].metadata
    return (tuple(int(x) for x in md["grid"]), int(dmd["mask_id"]), int(dmd["diffusion_steps"]),
            float(md["temperature"]), refinement_of(md), md.get("weights_sha256"))


def _check_same_weights(nir_path, exported: str | None, model, source: str) -> None:
    """A Norse model beside a given NIR file must be the one it was exported from
    (files written before the hash was recorded are not checked)."""
    from spikediff.checkpoint import weights_hash
    if exported is not None and str(exported) != weights_hash(model.vq, model.denoiser):
        raise SpikediffError(f"{nir_path} was exported from other weights than {source}; pass "
                             "--checkpoint with the checkpoint it was exported from")


@handle_errors
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.out is not None and a.json is not None and Path(a.out).resolve() == Path(a.json).resolve():
        raise SpikediffError(f"--out and --json both name {a.out}; give two files")
    check_outputs([a.out, a.json, a.save_calibration], a.force)
    import torch  # after the checks: --help and usage errors stay fast

    from . import backends as B

    need_model = a.backend == "norse" or a.compare or not a.nir
    model, source = load_model(a) if need_model else (None, None)
    tmp = None
    primary = ref = None
    try:
        nir_path = a.nir
        if a.backend in ("nir", "lava", "emulator") and not nir_path:
            tmp = B.TempNir(model)
            nir_path = tmp.path
        if nir_path:
            grid, mask_id, N, temp0, refine0, exported = _nir_info(nir_path)
            if model is not None and a.nir:
                _check_same_weights(a.nir, exported, model, source)
        else:
            grid, mask_id, N = model.grid, model.denoiser.mask_id, model.diffusion_steps
            temp0, refine0 = model.config.diffusion.temperature, model.config.diffusion.refinement()
        temperature = temp0 if a.temperature is None else a.temperature
        refine = refine_settings(a, refine0)
        dtype = torch.float64 if a.norse_dtype == "float64" else torch.float32
        t0 = time.perf_counter()
        fixed = a.backend == "emulator" or (a.backend == "lava" and a.lava_mode == "fixed_pt")
        frozen = fixed and a.lava_scales == "frozen"
        if (a.calibration or a.save_calibration) and not frozen:
            raise SpikediffError("--calibration and --save-calibration need frozen fixed-point "
                                 "scales (--backend emulator, or lava --lava-mode fixed_pt; "
                                 "--lava-scales frozen)")
        from hardware import calibration as C
        cal = C.read(a.calibration) if a.calibration else None
        primary = B.make_backend(a.backend, model, nir_path, mode=a.lava_mode, dtype=dtype,
                                 record_layers=a.compare, weights=a.lava_weights,
                                 scales=a.lava_scales, calibration=cal)
        if frozen and cal is None:   # the default: calibrate on this run's batch, in float
            B.calibrate(primary, a.n, grid=grid, mask_id=mask_id, diffusion_steps=N,
                        steps=a.steps, temperature=temperature, seed=a.seed, refine=refine)
        if a.compare:
            ref = B.NorseBackend(model, dtype)
        setup_s = time.perf_counter() - t0
        label = a.backend + (f" ({a.lava_mode})" if a.backend == "lava" else "") + (
            f", {a.lava_weights} 8-bit weights, {a.lava_scales} scales" if fixed else "")
        print(f"model: {source or nir_path}; back end: {label}; n={a.n}, "
              f"steps={a.steps or N}, seed={a.seed}, temperature={temperature:g}"
              + (f", refinement {refine.steps} x {refine.fraction:g} at {refine.temperature:g}"
                 if refine.steps else ""), file=sys.stderr)
        t0 = time.perf_counter()
        images, tokens, par = B.generate(primary, a.n, grid=grid, mask_id=mask_id,
                                         diffusion_steps=N, steps=a.steps,
                                         temperature=temperature, seed=a.seed,
                                         progress=not a.no_progress, reference=ref,
                                         refine=refine)
        gen_s = time.perf_counter() - t0
        report = {"backend": a.backend, "lava_mode": a.lava_mode if a.backend == "lava" else None,
                  "lava_weights": a.lava_weights if fixed else None,
                  "model": source or nir_path, "n": a.n, "steps": a.steps or N, "seed": a.seed,
                  "temperature": temperature, "refine": dataclasses.asdict(refine),
                  "setup_s": setup_s, "generate_s": gen_s,
                  "seconds_per_image": gen_s / a.n, "timing": dict(primary.timing),
                  "tokens": tokens.tolist()}
        if isinstance(primary, B.LavaBackend):
            report["lava_run_s"] = primary.lava_s
            report["lags"] = primary.lags
        if fixed:
            fxp = report["fixed_point"] = primary.fixed_point_report()
            for line in fxp["calibration"]:
                print(line if line.startswith("note:") else f"note: {line}", file=sys.stderr)
            counts = ", ".join(f"{k} {fxp[k]}" for k in ("a_in_over", "v_clipped",
                                                        "input_clipped") if fxp[k] is not None)
            print(f"fixed point ({fxp['scales']} scales), values beyond the ranges: {counts}"
                  + ("" if fxp["a_in_over"] is not None else
                     " (Lava does not expose a_in/v overflow; the emulator, bit-exact, counts it)"))
            if a.save_calibration:
                C.write(C.document(primary.calibration, "; ".join(
                    n.removeprefix("note: ") for n in fxp["calibration"])),
                        a.save_calibration)
                print(f"wrote {a.save_calibration}")
        print(f"generated {a.n} image(s) in {gen_s:.1f} s ({gen_s / a.n:.2f} s per image; "
              f"set-up {setup_s:.1f} s)")
        if par is not None:
            report["parity"] = par.to_dict()
            report["parity"]["reference"] = f"norse ({a.norse_dtype})"
            print(f"parity vs Norse ({a.norse_dtype}), same x_t and draws at every step:")
            print(par.format(getattr(primary, "lags", None)))
            d = report["parity"]
            verdict = ("identical spike trains on every layer" if d["all_spikes_identical"]
                       else "spike trains differ (see table)")
            print(f"  -> {verdict}")
        if a.out:
            from spikediff.plots import save_grid
            save_grid(images.float(), a.out, nrow=max(1, int(len(images) ** 0.5)))
            print(f"wrote {a.out}")
        if a.json:
            from spikediff.atomic import atomic_path
            with atomic_path(a.json) as p:
                Path(p).write_text(json.dumps(report, indent=2))
            print(f"wrote {a.json}")
    finally:
        for b in (primary, ref):
            if b is not None:
                b.close()
        if tmp is not None:
            tmp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
