"""Energy report of the shipped checkpoint and of the paper preset's architecture.

    python benchmarks/energy.py [--n 64] [--paper-n 2] [--data-root DIR] [--quick]

1. The shipped MNIST checkpoint (spikediff/weights/mnist.pt); while it
   is absent, the `default` preset with RANDOM weights, labelled as such.
2. The `paper` preset (SPEC section 1: T = 16, denoiser 2-64-128-256-512-256)
   with RANDOM weights: its operation counts for dense (ANN) and analog layers
   are exact, but its firing rates -- hence its synaptic operations and SNN
   energies -- come from an untrained network and mean little.

Every spike-fed layer is also counted by the brute-force method (all-ones
convolutions); the run fails on any disagreement. Writes the tables, JSON and
bar charts to benchmarks/results/energy-*.{txt,json,png}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hardware.energy.cli import real_images  # noqa: E402
from hardware.energy.constants import load_constants  # noqa: E402
from hardware.energy.report import (build_report, format_report, measure, save_plot,  # noqa: E402
                                    summary_line, write_json)
from spikediff import checkpoint  # noqa: E402
from spikediff.config import load_config  # noqa: E402
from spikediff.model import build_model  # noqa: E402
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2

OUT = ROOT / "benchmarks" / "results"


def run(label, model, meta, a, n, steps, dataset="mnist"):
    images, why = real_images(model, dataset, a.data_root, n)
    meta = dict(meta, backend="norse",
                time_steps={"vq": model.vq.cfg.T, "denoiser": model.denoiser.cfg.T})
    meta["warnings"] = list(meta.get("warnings", []))
    if images is None:
        meta["warnings"].append(f"encoder counted on generated images: {why}")
    t0 = time.perf_counter()
    tally, info = measure(model, n=n, steps=steps, seed=a.seed, real_images=images,
                          verify=True, progress=not a.no_progress)
    meta.update(info, wall_s=round(time.perf_counter() - t0, 1))
    rep = build_report(model, tally, load_constants(), meta)
    text = format_report(rep)
    print(f"\n##### {label}  ({meta['wall_s']} s)\n")
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"energy-{label}.txt").write_text(text + "\n")
    write_json(rep, OUT / f"energy-{label}.json")
    save_plot(rep, OUT / f"energy-{label}.png",
              title=f"Energy per component: {label}")
    print(f"\n{summary_line(rep)}\nwrote {OUT}/energy-{label}.{{txt,json,png}}")
    if not rep["brute_force_check"]["all_agree"]:
        raise SystemExit(f"{label}: fan-out and brute-force counts disagree")
    return rep


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="images for the shipped/default model "
                   "(default: 64)")
    p.add_argument("--paper-n", type=int, default=2, help="images for the paper preset (slow: T=16)")
    p.add_argument("--paper-steps", type=int, help="sampling steps for the paper preset (default 49)")
    p.add_argument("--data-root", default=os.environ.get("SPIKEDIFF_DATA_ROOT"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 images, 7 sampling steps each (smoke test)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    steps = 7 if a.quick else None
    n = 4 if a.quick else a.n

    if checkpoint.SHIPPED.is_file():
        model = checkpoint.load_model(None)
        meta = {"model": f"shipped checkpoint {checkpoint.SHIPPED.name}", "weights": "trained",
                "preset": model.config.preset}
        run("shipped", model, meta, a, n, steps)
    else:
        torch.manual_seed(a.seed)
        model = build_model(load_config("default"), 1, 28).inference()
        meta = {"model": "preset 'default', 1x28x28 (no shipped checkpoint yet)",
                "weights": "RANDOM (untrained): firing rates and energies are not those of a "
                           "trained model", "preset": "default",
                "warnings": ["shipped checkpoint absent: default preset with random weights"]}
        run("default-random", model, meta, a, n, steps)

    torch.manual_seed(a.seed)
    paper = build_model(load_config("paper"), 1, 28).inference()
    meta = {"model": "preset 'paper' (SPEC 1 architecture), 1x28x28",
            "weights": "RANDOM (untrained): rates come from untrained weights; dense/analog "
                       "counts are exact, spike counts are not meaningful", "preset": "paper",
            "warnings": ["paper architecture with random weights: firing rates are from an "
                         "untrained network"]}
    run("paper-random", paper, meta, a, a.paper_n if not a.quick else 1,
        steps or a.paper_steps)


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
