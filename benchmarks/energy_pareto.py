"""Held-out FID against energy per generated image, for models trained with
different firing-rate penalties (sparse firing, `spikediff train --firing-penalty`)
or fine-tuned at fewer denoiser time steps (`[denoiser] T` with `--finetune`).

    python benchmarks/energy_pareto.py --data-root ../shared/datasets \\
        --checkpoints spikediff/weights/mnist.pt runs/sparse-w0.5/checkpoint.pt ...

For each checkpoint, at the committed MNIST recipe's sampling settings (chosen
on held-out training images; temperature 1.0, 40 refinement steps of 0.1 at
0.3):
- held-out FID: --n samples against the checkpoint's held-out training images
  (`spikediff eval --select-only`'s number; the test split is not touched);
- energy per generated image (45 nm and Loihi) and firing rate per denoiser
  layer, from the real spikes of --n-energy generated images
  (hardware.energy, every spike-fed layer cross-checked by brute force);
- the ANN twin's energy (each layer's cheapest exact form).
Writes OUT.json (one entry per checkpoint, resumable: entries measured with
the same file and settings are reused) and OUT.png (FID against energy, one
panel per hardware model, the ANN's energy as a line).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikediff import checkpoint, metrics  # noqa: E402
from spikediff.atomic import write_text  # noqa: E402
from spikediff.diffusion import Refinement  # noqa: E402
from spikediff.errors import SpikediffError  # noqa: E402
from spikediff.evaluate import DRAWS  # noqa: E402
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2


def measure_one(path: Path, a, refine: Refinement) -> dict:
    from hardware.energy.cli import real_images
    from hardware.energy.constants import load_constants
    from hardware.energy.report import build_report, measure
    from spikediff.evaluate import evaluate

    ckpt = checkpoint.load(path)
    model = checkpoint.model_from(ckpt)
    held = evaluate(path, ckpt.data["name"], a.data_root, temperatures=[a.temperature],
                    select_n=a.n, seed=a.seed, refine=refine, select_only=True,
                    progress=not a.no_progress, fid_weights=a.fid_weights)
    fid = held["temperature_selection"]["fid_by_temperature"][str(a.temperature)]
    images, _ = real_images(model, ckpt.data["name"], a.data_root, a.n_energy)
    tally, info = measure(model, n=a.n_energy, temperature=a.temperature, refine=refine,
                          seed=a.seed, real_images=images, verify=True,
                          progress=not a.no_progress)
    rep = build_report(model, tally, load_constants(), info)
    if not rep["brute_force_check"]["all_agree"]:
        raise SpikediffError(f"{path}: operation counts disagree with the brute-force count")
    t = rep["per_generated_image"]
    train = ckpt.config["train"]
    return {
        "checkpoint": str(path), "sha256": metrics.file_sha256(path)[:16],
        "firing_penalty": train.get("firing_penalty", 0.0),
        "firing_target": list(train.get("firing_target", ())),
        "denoiser_T": ckpt.config["denoiser"]["T"],
        "heldout_fid": fid, "heldout_n": a.n, "heldout_on": held["temperature_selection"]["on"],
        "energy_n": a.n_energy,
        "firing_rate": {r["name"]: r["firing_rate"] for r in rep["layers"]
                        if r["component"] == "denoiser" and r["firing_rate"] is not None},
        "denoiser_firing_rate": rep["components"]["denoiser"]["firing_rate"],
        "snn_45nm_mj": t["snn_45nm_pj"] * 1e-9, "loihi_mj": t["loihi_pj"] * 1e-9,
        "loihi_one_synapse_mj": t["loihi_one_synapse_pj"] * 1e-9,
        "ann_45nm_mj": t["ann_45nm_pj"] * 1e-9,
        "ann_over_snn_45nm": t["ann_over_snn_45nm"], "ann_over_loihi": t["ann_over_loihi"],
        "ann_over_loihi_one_synapse": t["ann_over_loihi_one_synapse"],
    }


def settings(a, refine: Refinement) -> dict:
    # lava_weights: Loihi energies at one 8-bit synapse per connection (the
    # mapping's default since issue 30)
    return {"temperature": a.temperature, "refine": [refine.steps, refine.fraction,
                                                     refine.temperature],
            "n": a.n, "n_energy": a.n_energy, "seed": a.seed, "lava_weights": "single",
            "draws": DRAWS.strip("-")}  # how a seed becomes draws (rows of another rule differ)


def table(rows: list[dict]) -> str:
    layers = sorted({k for r in rows for k in r["firing_rate"]})
    head = (["checkpoint", "T", "penalty", "held-out FID"] + [f"rate {n.split('.')[1]}" for n in layers]
            + ["SNN 45 nm", "Loihi", "ANN 45 nm", "ANN/SNN 45 nm", "ANN/Loihi"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["checkpoint"], str(r["denoiser_T"]), f"{r['firing_penalty']:g}",
                  f"{r['heldout_fid']:.2f}"]
                 + [f"{r['firing_rate'].get(n, float('nan')):.3f}" for n in layers]
                 + [f"{r['snn_45nm_mj']:.3f} mJ", f"{r['loihi_mj']:.2f} mJ",
                    f"{r['ann_45nm_mj']:.2f} mJ", f"{r['ann_over_snn_45nm']:.1f}x",
                    f"{r['ann_over_loihi']:.2f}x"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from spikediff.plots import save_figure
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "snn_45nm_mj", "SNN at 45 nm (AC 0.9 pJ)"),
                           (axes[1], "loihi_mj", "SNN on Loihi (23.6 pJ per synaptic op, one 8-bit synapse)")):
        # two families through the unpenalised T = 4 model: fewer time steps, and
        # a firing penalty at T = 4 (a line joins only the points of one family)
        for label, color, keep in (
                ("fewer time steps (w = 0)", "tab:green", lambda r: r["firing_penalty"] == 0),
                ("firing penalty w (T = 4)", "tab:blue", lambda r: r["denoiser_T"] == 4)):
            fam = sorted((r for r in rows if keep(r)), key=lambda r: r[key])
            if fam:
                ax.plot([r[key] for r in fam], [r["heldout_fid"] for r in fam], "o-",
                        color=color, label=label)
        for r in rows:
            ax.annotate(f"T={r['denoiser_T']}, w={r['firing_penalty']:g}", (r[key], r["heldout_fid"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ann = sum(r["ann_45nm_mj"] for r in rows) / len(rows)
        ax.axvline(ann, color="tab:gray", ls="--", label=f"ANN twin at 45 nm ({ann:.1f} mJ)")
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short spans
        ax.set_xlabel("energy per generated image (mJ, log scale)")
        ax.set_ylabel(f"held-out FID (N = {rows[0]['heldout_n']})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("MNIST: quality against energy; denoiser time steps T, firing-rate penalty "
                 "weight w", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="models to compare")
    p.add_argument("--data-root", help="folder with the data set's standard files")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "energy-pareto"),
                   help="writes OUT.json and OUT.png (default: benchmarks/results/energy-pareto)")
    p.add_argument("--n", type=int, default=1000, help="samples per held-out FID (default: 1000)")
    p.add_argument("--n-energy", type=int, default=64,
                   help="generated images whose spikes are counted (default: 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="default: 1.0")
    p.add_argument("--refine-steps", type=int, default=40, help="default: 40")
    p.add_argument("--refine-fraction", type=float, default=0.1, help="default: 0.1")
    p.add_argument("--refine-temperature", type=float, default=0.3, help="default: 0.3")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--fid-weights", help="FID network file (default: as `spikediff eval`)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.n < 2 or a.n_energy < 1:
            raise SpikediffError("--n must be at least 2 and --n-energy at least 1")
        for c in a.checkpoints:
            if not Path(c).is_file():
                raise SpikediffError(f"no checkpoint at {c}")
        refine = Refinement(a.refine_steps, a.refine_fraction, a.refine_temperature)
        out_json, out_png = Path(a.out + ".json"), Path(a.out + ".png")
        saved = json.loads(out_json.read_text()) if out_json.is_file() else {}
        rows = {r["sha256"]: r for r in saved.get("rows", [])} \
            if saved.get("settings") == settings(a, refine) else {}
        result = []
        for c in a.checkpoints:
            sha = metrics.file_sha256(Path(c))[:16]
            row = rows.get(sha) or measure_one(Path(c), a, refine)
            row["checkpoint"] = c
            result.append(row)
            write_text(out_json, json.dumps({"settings": settings(a, refine),
                                             "rows": result + [r for s, r in rows.items() if s
                                                               not in {x["sha256"] for x in result}]},
                                            indent=1))
        plot(result, out_png)
        print(table(result))
        print(f"wrote {out_json} and {out_png}")
    except SpikediffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
