"""The fixed-point emulator vs Lava fixed_pt: generation speed side by side, and
the same images bit for bit.

    python benchmarks/emulator_speed.py                     # shipped checkpoint, rounded
                                                            # to 8 bits (--round8), n 2
    python benchmarks/emulator_speed.py --checkpoint QAT_CKPT --n 4 --steps 4 --repeats 3
    python benchmarks/emulator_speed.py --lava-weights split --no-round8   # the split mapping
    python benchmarks/emulator_speed.py --lava-scales per-call    # re-calibrated at every call

Each back end first runs one short generation (builds the Lava process graphs /
the emulator's integer parameters), then --repeats timed generations of one
batch (--n images on Lava, --emulator-n on the emulator: each at the batch it
generates in) with --steps diffusion steps, seeds 1..repeats; medians of wall
seconds per image (host work included). --lava-scales frozen (default): both
back ends get the same calibration, measured once before them on a float
generation of --n images (seed 0, hardware/calibration.py; its time is
reported apart); per-call: the float calibration run the mapping does at every
call is in both timings. Then it checks
that the emulator at --n on Lava's seeds gave Lava's tokens and images on every
repeat (bit-exact), and
prints the speed-up. --round8 runs a checkpoint not fine-tuned for 8 bits with
its exported weights rounded onto the 8-bit grid (export/loihi8.py; post-training
rounding, what [train] quantize = "loihi8" starts from), so that it runs unsplit.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from hardware import backends as B  # noqa: E402
from spikediff.cliutil import ArgumentParser, handle_errors  # noqa: E402


def timed(backend, model, n, steps, seed):
    t0 = time.perf_counter()
    images, tokens, _ = B.generate(backend, n, grid=model.grid, mask_id=model.denoiser.mask_id,
                                   diffusion_steps=model.diffusion_steps, steps=steps,
                                   temperature=model.config.diffusion.temperature, seed=seed)
    return time.perf_counter() - t0, images, tokens


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the shipped MNIST checkpoint")
    p.add_argument("--n", type=int, default=2, help="images per Lava batch (Lava's time per "
                   "image does not fall with the batch: docs/lava.md)")
    p.add_argument("--emulator-n", type=int, default=64, help="images per emulator batch, "
                   "timed (its bit-exactness is checked at --n, on Lava's seeds)")
    p.add_argument("--steps", type=int, default=4, help="diffusion steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lava-weights", choices=["single", "split"], default="single")
    p.add_argument("--lava-scales", choices=["frozen", "per-call"], default="frozen")
    p.add_argument("--round8", action=argparse.BooleanOptionalAction, default=True,
                   help="round a checkpoint not trained for 8 bits onto the grid (default on)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if min(a.n, a.emulator_n, a.steps, a.repeats) < 1:
        p.error("--n, --emulator-n, --steps and --repeats must be >= 1")

    from spikediff import checkpoint, qat
    model = checkpoint.load_model(a.checkpoint)
    source = str(checkpoint.resolve(a.checkpoint))
    if a.round8 and not model.config.train.quantize:
        model.config.train.quantize = "loihi8"
        qat.enable(model, "loihi8")
        source += " (weights rounded to 8 bits, not fine-tuned)"
    torch.set_num_threads(1)
    print(f"model: {source}; n={a.n}, steps={a.steps}, median of {a.repeats}; "
          f"{a.lava_weights} 8-bit weights, {a.lava_scales} scales; 1 torch thread", flush=True)
    tmp = B.TempNir(model)
    rows, outs = {}, {}
    cal, calibrate_s = None, None
    load = [os.getloadavg()[0]]   # other jobs on the machine slow both back ends
    try:
        if a.lava_scales == "frozen":
            t0 = time.perf_counter()
            cal = B.measure(tmp.path, a.n, grid=model.grid, mask_id=model.denoiser.mask_id,
                          diffusion_steps=model.diffusion_steps, steps=a.steps,
                          temperature=model.config.diffusion.temperature, seed=0)
            calibrate_s = time.perf_counter() - t0
            print(f"  calibration: {cal['calibration_set']} ({calibrate_s:.0f} s)", flush=True)
        kw = dict(record_layers=False, weights=a.lava_weights, scales=a.lava_scales,
                  calibration=cal)
        for name in ("lava", "emulator"):
            t0 = time.perf_counter()
            be = (B.LavaBackend(tmp.path, "fixed_pt", **kw) if name == "lava" else
                  B.EmulatorBackend(tmp.path, **kw))
            n = a.n if name == "lava" else a.emulator_n
            try:
                timed(be, model, n, 1, 0)       # build / warm up
                setup = time.perf_counter() - t0
                runs = [timed(be, model, n, a.steps, 1 + r) for r in range(a.repeats)]
                if name == "emulator":          # Lava's batches and seeds, for the check
                    runs_n = [timed(be, model, a.n, a.steps, 1 + r) for r in range(a.repeats)]
                else:
                    runs_n = runs
            finally:
                be.close()
            walls = [r[0] for r in runs]
            outs[name] = [(r[1], r[2]) for r in runs_n]
            rows[name] = {"n": n, "setup_s": setup, "wall_s": walls,
                          "s_per_img_median": statistics.median(walls) / n}
            print(f"  {name:9s} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        tmp.close()
    load.append(os.getloadavg()[0])
    same = all(torch.equal(ta, tb) and torch.equal(ia, ib)
               for (ia, ta), (ib, tb) in zip(outs["lava"], outs["emulator"]))
    speedup = rows["lava"]["s_per_img_median"] / rows["emulator"]["s_per_img_median"]
    print(f"\n{'back end':10s} {'batch':>6s} {'set-up s':>9s} {'s/img (median)':>15s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['n']:6d} {r['setup_s']:9.1f} {r['s_per_img_median']:15.4f}")
    print(f"emulator speed-up: {speedup:.0f}x; tokens and images identical on every repeat: "
          f"{same}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": source, "n": a.n, "emulator_n": a.emulator_n, "steps": a.steps,
                       "repeats": a.repeats, "lava_weights": a.lava_weights,
                       "lava_scales": a.lava_scales,
                       "calibration_set": cal["calibration_set"] if cal else None,
                       "calibrate_s": calibrate_s, "load_average_1min": load, "rows": rows, "speedup": speedup,
                       "bit_exact": same}, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
