"""Does showing the discriminator decoded *samples* make the decoder forgive the denoiser?

On MNIST the committed model reconstructs the test split at FID 8.90 while its
samples sit at 12.1-12.4: the decoder only ever learned from the encoder's
code grids, and the denoiser's grids differ from those a little everywhere.
This continues the decoder stage (reconstruction + adversarial term on frozen
codes) in two arms from the same committed weights, side by side:

- control: the decoder stage as it is, a few epochs more;
- samples: the same, plus the adversarial term on decoded denoiser samples
  (grids drawn beforehand with the model's own sampling settings), so the
  discriminator sees real images against reconstructions *and* samples.

The discriminator starts afresh in both arms (the committed checkpoint keeps
none), from the same seed, and both see the same real batches.

Both arms then decode the same held-out draws (another seed), and the FID of
those images against the held-out training images (never the test split)
says which decoder turns the denoiser's grids into better images, with the
committed decoder as the third column. Reconstruction MSE on the held-out
images shows what each arm costs the autoencoder.

    python benchmarks/decoder_on_samples.py --data-root ../shared/datasets --work runs/dec-samples
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project and the sibling heldout_draws.py

from spikediff import metrics  # noqa: E402
from spikediff.adversarial import Adversary  # noqa: E402
from spikediff.atomic import write_text  # noqa: E402
from spikediff.cli import handle_errors  # noqa: E402
from spikediff.errors import SpikediffError  # noqa: E402
from spikediff.evaluate import decode_tokens, fid_of  # noqa: E402
from spikediff.sample import cached_tokens  # noqa: E402
from spikediff.train import _lr_factor, encode_codes  # noqa: E402
import heldout_draws  # noqa: E402


def train_arm(vq, codes, images, draws, epochs: int, lr: float, weight: float, per_step: int,
              batch: int, seed: int, progress: bool) -> list[dict]:
    """Decoder stage on (codes, images) with a fresh discriminator; with
    per_step > 0, also `per_step` decoded draws per batch under the
    adversarial term. Cosine rate to 0."""
    adversary = Adversary(images.shape[1], weight, 0, lr, seed)
    net = vq.decoding_side()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    bs, steps = batch, len(codes) // batch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor("cosine", step, epochs * steps))
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        vq.eval()
        net.train()
        order = torch.randperm(len(codes), generator=g)
        d_order = torch.randint(0, max(len(draws), 1), (steps * max(per_step, 1),), generator=g)
        sums: dict[str, float] = {}
        for i in tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                      disable=not progress):
            idx = order[i * bs:(i + 1) * bs]
            real = images[idx].float() / 127.5 - 1
            grids = codes[idx]
            if per_step:
                grids = torch.cat([grids, draws[d_order[i * per_step:(i + 1) * per_step]]])
            out = vq.decode_images(grids)  # one forward: one set of batch statistics
            rec = torch.nn.functional.mse_loss(out[:bs], real) / vq.data_variance
            # The fakes: the reconstructions, and the draws where there are any.
            terms = adversary.generator_terms({"loss": rec, "output": out}, real,
                                              vq.readout.weight, step=0)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            sched.step()
            logged = {"recon": rec, "adversarial": terms["adversarial"]} | adversary.update()
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v.item() / steps
        history.append({"epoch": epoch + 1} | {k: round(v, 5) for k, v in sums.items()})
        tqdm.write(str(history[-1]))
    vq.eval()
    return history


@handle_errors
def main(argv=None) -> int:
    p = heldout_draws.parser(__doc__, "folder for the draws and decoders (resumable)")
    p.add_argument("--train-draws", type=int, default=4000, help="sampled grids to train on")
    p.add_argument("--batch", type=int, default=128,
                   help="real grids per step (default: the decoder stage's 128)")
    p.add_argument("--per-step", type=int, default=32, help="draws added to each batch")
    p.add_argument("--epochs", type=int, default=2, help="decoder epochs per arm (default: 2)")
    p.add_argument("--lr", type=float, default=2e-4,
                   help="starting rate, annealed to 0 by a cosine (default: 2e-4)")
    p.add_argument("--adversarial-weight", type=float, default=0.8,
                   help="the term's weight, as train.adversarial_weight (default: 0.8)")
    p.add_argument("--limit", type=int, help="train on the first LIMIT images only (tests)")
    a = p.parse_args(argv)
    s = heldout_draws.setup(a)
    model = s.model
    train_images, held_images = s.images[:-s.held], s.images[-s.held:]
    if a.limit:
        train_images = train_images[:a.limit]
    if len(train_images) < a.batch or a.epochs < 1 or a.per_step < 1:
        raise SpikediffError(f"need --epochs >= 1, --per-step >= 1 and at least --batch "
                             f"{a.batch} training images (have {len(train_images)})")
    codes = encode_codes(model.vq, train_images, "cpu", s.progress)
    draws = cached_tokens(s.work / "train-draws.npz", model, a.train_draws, 300, a.temperature,
                          s.refine, s.progress)
    evals = cached_tokens(s.work / "eval-draws.npz", model, a.n, 400, a.temperature, s.refine,
                          s.progress)

    net, cache, ref = s.reference(a)
    held_codes = encode_codes(model.vq, held_images, "cpu")
    held01 = held_images.float() / 255
    arms = {"committed": None, "control": 0, "samples": a.per_step}
    settings = {"checkpoint": str(Path(a.checkpoint).resolve()), "train_draws": a.train_draws,
                "batch": a.batch, "per_step": a.per_step, "epochs": a.epochs, "lr": a.lr,
                "adversarial_weight": a.adversarial_weight, "limit": a.limit}
    results = {}
    for name, per_step in arms.items():
        vq = copy.deepcopy(model.vq)
        saved = s.work / f"decoder-{name}.pt"
        history = []
        if per_step is not None:
            if saved.exists():
                blob = torch.load(saved, weights_only=False)
                if blob.get("settings") != settings:
                    raise SpikediffError(f"{saved} was trained with other settings "
                                         f"({blob.get('settings')}); use another --work")
                vq.load_state_dict(blob["vq"])
                history = blob["history"]
            else:
                history = train_arm(vq, codes, train_images, draws, a.epochs, a.lr,
                                    a.adversarial_weight, per_step, a.batch, 0, s.progress)
                blob = {"vq": vq.state_dict(), "history": history, "settings": settings}
                torch.save(blob, saved.with_suffix(".tmp"))
                saved.with_suffix(".tmp").replace(saved)
        feats = metrics.features_resumable(net, decode_tokens(vq, evals, 250), cache,
                                           f"dec-samples-{s.work.name}-{name}-{a.n}",
                                           progress=s.progress)
        mse = torch.nn.functional.mse_loss(decode_tokens(vq, held_codes, 250), held01).item()
        results[name] = {"heldout_fid": round(fid_of(feats, ref), 2),
                         "heldout_recon_mse": round(mse, 5), "history": history}
        print(name, {k: v for k, v in results[name].items() if k != "history"}, flush=True)
    out = {"n": a.n, **settings, "checkpoint": a.checkpoint, "arms": results,
           "sampling": s.sampling(a)}
    if a.json:
        write_text(a.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
