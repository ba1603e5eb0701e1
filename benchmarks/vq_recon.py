"""Reconstruction quality of VQ-SVAE checkpoints, side by side.

For each checkpoint (a finished stage 1 is enough): MSE, SSIM and the FID of
its reconstructions against the images themselves, on the run's held-out
training images (default: tuning never touches the test split) or on the test
split. The recon FID is the ceiling for samples, since every sample is a
decoding of a code grid. Features are cached, so a killed run resumes.

    python benchmarks/vq_recon.py --data-root ../shared/datasets runs/a/checkpoint.pt runs/b/checkpoint.pt
"""
from __future__ import annotations

import json

from spikediff import checkpoint, metrics
from spikediff.atomic import write_text
from spikediff.cliutil import handle_errors, pick_device
from spikediff.errors import SpikediffError
from spikediff.evaluate import reconstruction, reconstruction_fid, reference_features
from spikediff.cliutil import ArgumentParser  # one error: line, exit 2


def recon_quality(path, data_root, split, net, cache, device, progress) -> dict:
    ckpt = checkpoint.load(path)
    if ckpt.vq is None:
        raise SpikediffError(f"{path} has no VQ-SVAE weights yet (stage 1 has not saved an epoch)")
    model = checkpoint.model_from(ckpt)
    d = ckpt.data
    holdout = d["holdout"] if split == "holdout" else None
    if split == "holdout" and not holdout:
        raise SpikediffError(f"{path} kept no held-out training images; use --split test")
    ref, images = reference_features(net, cache, d["name"], data_root,
                                     "train" if holdout else "test", d["image_size"],
                                     d["channels"] == 3, progress, holdout_of=holdout)
    r, recons = reconstruction(model, images, device)
    file_id = metrics.file_sha256(checkpoint.resolve(path))[:16]
    r["fid"] = reconstruction_fid(net, cache, recons, ref, file_id, split, progress)
    decoder_epochs, decoder_seconds = checkpoint.decoder_training(ckpt)
    return {"checkpoint": str(path), "dataset": d["name"], "split": split} | r | {
            "vq_epochs": len(ckpt.history["vq"]),
            "vq_seconds": ckpt.seconds.get("vq", 0.0),
            "decoder_epochs": decoder_epochs, "decoder_seconds": decoder_seconds,
            "adversarial_weight": checkpoint.vq_train_settings(ckpt).get("adversarial_weight", 0.0)}


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint.pt files with a trained VQ-SVAE")
    p.add_argument("--data-root")
    p.add_argument("--split", choices=("holdout", "test"), default="holdout",
                   help="each run's held-out training images (default) or the test split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fid-weights")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    net = metrics.FIDNetwork(a.fid_weights, device=device)
    cache = metrics.FeatureCache()
    rows = [recon_quality(c, a.data_root, a.split, net, cache, device, not a.no_progress)
            for c in a.checkpoints]
    print(f"| checkpoint | VQ + decoder-stage epochs | adversarial weight | MSE | SSIM | "
          f"recon FID ({a.split}) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['vq_epochs']} + {r['decoder_epochs']} | "
              f"{r['adversarial_weight']} | "
              f"{r['mse']:.4f} | {r['ssim']:.3f} | {r['fid']:.2f} (N={r['n']}) |")
    if a.json:
        write_text(a.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
