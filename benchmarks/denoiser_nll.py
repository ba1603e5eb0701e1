"""Held-out likelihood of denoiser checkpoints, side by side: minutes, not FID's hour.

For each checkpoint: the absorbing diffusion's ELBO, a bound on -log p in nats
per latent token, and the cross-entropy on masked tokens, on the code grids of
the run's held-out training images (never the test split), with the same
draws of t and masks for every checkpoint, so the comparison is paired. Lower
is better. It ranks denoisers trained on the same VQ-SVAE; another VQ-SVAE
gives other codes, and its numbers do not compare. It is a proxy: the FID of
samples (`spikediff eval --select-only`) is what the README's table reports.

    python benchmarks/denoiser_nll.py --data-root ../shared/datasets runs/a/checkpoint.pt runs/b/checkpoint.pt
"""
from __future__ import annotations

import json

import torch

from spikediff import checkpoint
from spikediff.atomic import write_text
from spikediff.cliutil import handle_errors, pick_device
from spikediff.data import load_images
from spikediff.diffusion import diffusion_loss
from spikediff.errors import SpikediffError
from spikediff.train import encode_codes
from spikediff.cliutil import ArgumentParser  # one error: line, exit 2


@torch.no_grad()
def heldout_nll(path, data_root, weights: str, repeats: int, seed: int, device,
                batch_size: int = 250) -> dict:
    ckpt = checkpoint.load(path)
    if ckpt.denoiser is None:
        raise SpikediffError(f"{path} has no denoiser weights yet (stage 2 has not saved an epoch)")
    d = ckpt.data
    if not d.get("holdout"):
        raise SpikediffError(f"{path} kept no held-out training images (train.holdout = 0)")
    model = checkpoint.model_from(ckpt, weights).to(device).eval()
    images = load_images(d["name"], data_root, "train", image_size=d["image_size"],
                         rgb=d["channels"] == 3).images[-d["holdout"]:]
    tokens = encode_codes(model.vq, images, device)
    torch.manual_seed(seed)  # the same t and masks for every checkpoint
    n, elbo, ce = 0, 0.0, 0.0
    for _ in range(repeats):
        for i in range(0, len(tokens), batch_size):
            x0 = tokens[i:i + batch_size].to(device)
            out = diffusion_loss(model.denoiser, x0, model.diffusion_steps, model.denoiser.mask_id)
            n += len(x0)
            elbo += out["elbo"].item() * len(x0)
            ce += out["masked_ce"].item() * len(x0)
    cfg = ckpt.config
    epochs, seconds, _ = checkpoint.denoiser_training(ckpt)
    return {"checkpoint": str(path), "dataset": d["name"], "weights": weights,
            "n_images": len(tokens), "repeats": repeats,
            # diffusion_loss's ELBO term is per token and per step; the bound sums N steps.
            "nll_bound_nats_per_token": model.diffusion_steps * elbo / n,
            "masked_ce": ce / n,
            "denoiser_epochs": epochs, "denoiser_seconds": seconds,
            "loss": cfg["diffusion"].get("loss", "elbo")}


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint.pt files with a trained denoiser")
    p.add_argument("--data-root")
    p.add_argument("--weights", choices=checkpoint.WEIGHTS, default="ema",
                   help="a run's averaged denoiser weights where it kept them (default) or "
                        "the last step's")
    p.add_argument("--repeats", type=int, default=4,
                   help="passes over the held-out images, each with fresh t and masks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.repeats < 1:
        raise SpikediffError("--repeats must be at least 1")
    device = pick_device(a.device)
    rows = [heldout_nll(c, a.data_root, a.weights, a.repeats, a.seed, device)
            for c in a.checkpoints]
    print(f"| checkpoint | loss | denoiser epochs | NLL bound (nats/token) | masked CE |"
          f"  ({a.weights} weights, {rows[0]['n_images']} held-out images x {a.repeats})")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['loss']} | {r['denoiser_epochs']} | "
              f"{r['nll_bound_nats_per_token']:.4f} | {r['masked_ce']:.4f} |")
    if a.json:
        write_text(a.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
