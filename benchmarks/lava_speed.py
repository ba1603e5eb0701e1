"""Lava vs Norse generation speed: Lava time steps per second and seconds per image.

    python benchmarks/lava_speed.py                      # shipped checkpoint if present,
                                                         # else default preset, random weights
    python benchmarks/lava_speed.py --preset tiny --n 2 --steps 2 --repeats 2   # quick
    python benchmarks/lava_speed.py --checkpoint CKPT --json out.json

For each back end (lava floating_pt, lava fixed_pt, norse float32 and float64) it
first runs one short generation (builds and caches the Lava process graphs), then
--repeats timed generations of --n images with --steps diffusion steps, all in one
batch, and reports medians:

* Lava steps/s: simulated time steps (T + pipeline lag per call) per second of
  generation wall time (host work, file transfer and Lava together);
* s/img (measured): generation wall time / n for --steps diffusion steps;
* s/img (full): extrapolated to the model's full sampling schedule (one denoiser
  call per latent token): (denoiser time per call x diffusion steps + decode time) / n.

Per-layer recording is off (record_layers=False): only the outputs the host needs
come back from Lava.
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

from spikediff.model import active_random_model  # noqa: E402
from hardware import backends as B  # noqa: E402
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2


def timed(backend, model, n, steps, seed):
    t = dict(backend.timing)
    t0 = time.perf_counter()
    B.generate(backend, n, grid=model.grid, mask_id=model.denoiser.mask_id,
               diffusion_steps=model.diffusion_steps, steps=steps,
               temperature=model.config.diffusion.temperature, seed=seed)
    wall = time.perf_counter() - t0
    d = {k: backend.timing[k] - t[k] for k in t}
    return {"wall_s": wall, "time_steps": d["time_steps"],
            "denoise_per_call_s": d["denoise_s"] / max(d["denoise_calls"], 1),
            "decode_s": d["decode_s"]}


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--preset", default="default", help="random-weights preset when no checkpoint")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="diffusion steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="lava:floating_pt,lava:fixed_pt,norse:float32,norse:float64")
    p.add_argument("--json")
    a = p.parse_args(argv)

    from spikediff import checkpoint
    if a.checkpoint or checkpoint.SHIPPED.is_file():
        model = checkpoint.load_model(a.checkpoint)
        source = str(checkpoint.resolve(a.checkpoint))
    else:
        model = active_random_model(a.preset, 0).inference()
        source = f"preset {a.preset}, RANDOM weights (no shipped checkpoint yet)"
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    N = model.diffusion_steps
    print(f"model: {source}; T(vq)={model.vq.cfg.T}, T(denoiser)={model.denoiser.cfg.T}, "
          f"{N} diffusion steps for a full image; timing n={a.n}, steps={a.steps}, "
          f"median of {a.repeats}; cpu threads {torch.get_num_threads()}")
    tmp = B.TempNir(model)
    rows = []
    try:
        for spec in a.backends.split(","):
            kind, opt = spec.split(":")
            t0 = time.perf_counter()
            if kind == "lava":
                be = B.LavaBackend(tmp.path, opt, record_layers=False)
            else:
                be = B.NorseBackend(model, torch.float64 if opt == "float64" else torch.float32)
            try:
                timed(be, model, a.n, 1, 0)       # build / warm up
                setup = time.perf_counter() - t0
                runs = [timed(be, model, a.n, a.steps, 1 + r) for r in range(a.repeats)]
            finally:
                be.close()
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            full = (med["denoise_per_call_s"] * N + med["decode_s"]) / a.n
            row = {"backend": spec, "setup_s": setup, "steps_per_s": med["time_steps"] / med["wall_s"],
                   "s_per_img_measured": med["wall_s"] / a.n, "s_per_img_full": full,
                   "denoise_per_call_s": med["denoise_per_call_s"], "decode_s": med["decode_s"],
                   "runs": runs}
            rows.append(row)
            print(f"  {spec:18s} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        tmp.close()
    print(f"\n{'back end':18s} {'set-up s':>9s} {'steps/s':>9s} {'denoise s/call':>15s} "
          f"{'decode s':>9s} {'s/img (' + str(a.steps) + ' steps)':>17s} {'s/img (full ' + str(N) + ')':>16s}")
    for r in rows:
        print(f"{r['backend']:18s} {r['setup_s']:9.1f} {r['steps_per_s']:9.1f} "
              f"{r['denoise_per_call_s']:15.3f} {r['decode_s']:9.2f} "
              f"{r['s_per_img_measured']:17.2f} {r['s_per_img_full']:16.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": source, "n": a.n, "steps": a.steps, "repeats": a.repeats,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
