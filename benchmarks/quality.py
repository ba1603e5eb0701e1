"""The README's quality table: standard FID, KID, reconstruction per data set.

For each data set, evaluates the project's checkpoint (given as
DATASET=PATH, trained with the command in the README) with `spikediff eval`'s
machinery: temperature chosen on held-out training images, FID/KID of N
samples against the full test split, the paper-protocol FID (1,280 vs the
first 1,280 test images). Results go to benchmarks/results/quality_<ds>.json;
a data set whose JSON exists is skipped (resumable; --force recomputes), and
feature caches make a killed evaluation continue where it stopped.

    python benchmarks/quality.py --data-root ../shared/datasets \
        mnist=spikediff/weights/mnist.pt fashion-mnist=runs/fashion/checkpoint.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikediff import checkpoint
from spikediff.atomic import write_text
from spikediff.cliutil import add_refine_args, add_weights_arg, handle_errors, refine_from_args
from spikediff.evaluate import evaluate
from spikediff.cliutil import ArgumentParser  # one error: line, exit 2

RESULTS = Path(__file__).parent / "results"
PAPER_FID = {"mnist": 37.50, "fashion-mnist": 91.98, "kmnist": 59.23, "emnist-letters": 67.41,
             "cifar10": 120.5}
ORDER = ["mnist", "fashion-mnist", "kmnist", "emnist-letters", "cifar10"]
NOTES = {"kmnist": "trained on the 7,011 train images available here",
         "cifar10": "quality-75 JPEG copy of CIFAR-10: not strictly comparable",
         "emnist-letters": "no data here (EMNIST is not in ../shared/datasets)"}


def table(rows: dict) -> str:
    head = ("| data set | FID (N vs full test) | paper-protocol FID | paper's FID | KID x1e3 | "
            "recon MSE / FID | T | temp. | training | hardware | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for ds in ORDER + sorted(set(rows) - set(ORDER)):
        r = rows.get(ds)
        note = NOTES.get(ds, "")
        if r is None:
            lines.append(f"| {ds} | not measured | | {PAPER_FID[ds]} | | | | | | | {note} |")
            continue
        if r.get("denoiser_weights") == "ema":
            note = "; ".join(filter(None, [note, "averaged denoiser weights"]))
        if "refine" in r:
            f = r["refine"]
            note = "; ".join(filter(None, [note, f"{f['steps']} refinement steps of "
                                           f"{f['fraction']:g} at T {f['temperature']:g}"]))
        pp = r.get("paper_protocol_fid", {}).get("value")
        pp = f"{pp:.2f}" if pp is not None else "n/a"
        rec = r["reconstruction"]
        rec = f"{rec['mse']:.4f}" + (f" / {rec['fid']:.1f}" if "fid" in rec else "")
        lines.append(
            f"| {ds} | {r['fid']['value']:.2f} (N={r['fid']['n_samples']}) | "
            f"{pp} | {PAPER_FID[r['dataset']]} | {1e3 * r['kid']['mean']:.2f} | "
            f"{rec} | {r['T']} | {r['temperature']} | "
            f"{r['training']} | {r['hardware']} | {note} |")
    return "\n".join(lines)


def training_summary(path) -> tuple[str, int, str]:
    ck = checkpoint.load(path)
    epochs, seconds, hardware = checkpoint.denoiser_training(ck)
    decoder, decoder_seconds = checkpoint.decoder_training(ck)
    minutes = (ck.seconds.get("vq", 0.0) + seconds + decoder_seconds) / 60
    T = ck.config["denoiser"]["T"]
    decoder = f" + {decoder} decoder" if decoder != "0" else ""
    return (f"{len(ck.history['vq'])}+{epochs}{decoder} epochs, {minutes:.1f} min", T,
            hardware or "see model card")


@handle_errors
def main(argv=None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="DATASET[:LABEL]=CHECKPOINT pairs (LABEL names the "
                   "row and result file when one data set has several checkpoints)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--temperatures", default="0.8,0.9,1.0",
                   help="candidates chosen by FID on held-out train images; one value: use it")
    p.add_argument("--select-n", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256, help="sampling batch size")
    p.add_argument("--fid-weights")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--recon-fid", action="store_true",
                   help="also the FID of test-split reconstructions (the VQ-SVAE's ceiling)")
    add_weights_arg(p)
    add_refine_args(p)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.results)
    for pair in a.runs:
        if "=" not in pair:
            p.error(f"{pair!r}: give DATASET[:LABEL]=CHECKPOINT")
        name, ckpt = pair.split("=", 1)
        ds, _, label = name.partition(":")
        dest = out / f"quality_{label or ds}.json"
        if dest.exists() and not a.force:
            print(f"{ds}: {dest} exists, skipped")
            continue
        temps = [float(t) for t in a.temperatures.split(",")]
        r = evaluate(ckpt, ds, a.data_root, a.n,
                     temperature=temps[0] if len(temps) == 1 else None,
                     temperatures=temps if len(temps) > 1 else None,
                     select_n=a.select_n, device=a.device, fid_weights=a.fid_weights,
                     batch_size=a.batch_size, recon_fid=a.recon_fid, weights=a.weights,
                     refine=refine_from_args(a, ckpt))
        r["training"], r["T"], r["hardware"] = training_summary(ckpt)
        write_text(dest, json.dumps(r, indent=2))
        print(f"{label or ds}: FID {r['fid']['value']:.2f} (N={a.n}) -> {dest}")
    rows = {f.stem.removeprefix("quality_"): json.loads(f.read_text())
            for f in sorted(out.glob("quality_*.json"))}
    md = table(rows)
    write_text(out / "quality.md", md + "\n")
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
