"""Does a token-grid critic, used for importance resampling, lower sample FID?

The question behind it: on MNIST the committed model's decoder reconstructs
the test split at FID 8.90 and its samples sit at 12.36, so what is left is in
which token grids the denoiser draws. A classifier between real code grids
(the training images, encoded) and generated ones estimates their density
ratio; drawing k candidates per image and keeping one with probability
proportional to exp(gamma * logit) moves the samples towards the real grids
(sampling-importance-resampling, as discriminator rejection sampling does for
GANs), at k times the denoiser's cost. The critic is a small spiking network
of the project's own layers, so it could run on the same chip.

Steps, each cached under --work so a killed run resumes:
1. draw --train-samples grids (seed 100) and encode the training images;
2. train the critic (real: all training images but the checkpoint's holdout;
   generated: all but the last 2,000 draws, which with the holdout's 2,000
   real grids measure its accuracy);
3. draw a pool of k_max x --n grids (seed 200) and their FID features;
4. for each k and gamma, pick one of the k candidates of each image and take
   the FID of the --n picks against the held-out training images (never the
   test split). k = 1 is the plain sampler on the same draws (paired).

    python benchmarks/critic_resampling.py --data-root ../shared/datasets --work runs/critic-bench
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project and the sibling heldout_draws.py

from spikediff import metrics  # noqa: E402
from spikediff.atomic import write_text  # noqa: E402
from spikediff.cli import handle_errors  # noqa: E402
from spikediff.errors import SpikediffError  # noqa: E402
from spikediff.evaluate import decode_tokens, fid_of  # noqa: E402
from spikediff.layers import SpikingConv, conv3x3  # noqa: E402
from spikediff.sample import cached_tokens  # noqa: E402
from spikediff.train import encode_codes  # noqa: E402
import heldout_draws  # noqa: E402

class SpikingCritic(nn.Module):
    """Token grid -> one logit: log p_real / p_generated where the classes are balanced."""

    def __init__(self, vocabulary: int, channels=(64, 64, 64), embed: int = 64, T: int = 4):
        super().__init__()
        self.T = T
        self.embed = nn.Embedding(vocabulary, embed)
        c = [embed, *channels]
        self.layers = nn.ModuleList(SpikingConv(conv3x3(a, b), b) for a, b in zip(c, c[1:]))
        self.head = nn.Linear(channels[-1], 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.layers[0].forward_static(self.embed(tokens).permute(0, 3, 1, 2), self.T)
        for layer in self.layers[1:]:
            s = layer(s)
        return self.head(s.mean((0, 3, 4))).squeeze(1)  # rate over time and space

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.cat([self(tokens[i:i + 500]) for i in range(0, len(tokens), 500)])


def train_critic(real: torch.Tensor, gen: torch.Tensor, held: int, vocabulary: int, epochs: int,
                 batch: int = 128, progress: bool = True) -> tuple[SpikingCritic, list[dict]]:
    """The last `held` grids of each kind (the real ones: the checkpoint's
    holdout) are not trained on; they give the validation loss and accuracy."""
    torch.manual_seed(0)
    net = SpikingCritic(vocabulary)
    real_tr, real_va, gen_tr, gen_va = real[:-held], real[-held:], gen[:-held], gen[-held:]
    batch = min(batch, len(gen_tr))
    steps = len(gen_tr) // batch
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * steps)
    y = torch.cat([torch.ones(batch), torch.zeros(batch)])
    history = []
    for epoch in range(epochs):
        net.train()
        pg = torch.randperm(len(gen_tr))
        pr = torch.randint(0, len(real_tr), (steps * batch,))  # balanced: as many real as generated
        for i in tqdm(range(steps), desc=f"critic epoch {epoch + 1}/{epochs}", leave=False,
                      disable=not progress):
            x = torch.cat([real_tr[pr[i * batch:(i + 1) * batch]], gen_tr[pg[i * batch:(i + 1) * batch]]])
            loss = F.binary_cross_entropy_with_logits(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        lr_, lg = net.logits(real_va), net.logits(gen_va)
        val = (F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
               + F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg))).item() / 2
        acc = ((lr_ > 0).float().mean() + (lg < 0).float().mean()).item() / 2
        history.append({"epoch": epoch + 1, "val_loss": round(val, 4), "val_accuracy": round(acc, 4)})
        tqdm.write(str(history[-1]))
    return net, history


def pick(logit: torch.Tensor, n: int, k: int, gamma: float, seed: int = 7) -> torch.Tensor:
    """Pool indices of one candidate per image; candidate j of image i is pool[i + j * n]."""
    idx = torch.arange(n).view(n, 1) + n * torch.arange(k).view(1, k)
    w = torch.softmax(gamma * logit[idx], 1)
    choice = torch.multinomial(w, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
    return idx[torch.arange(n), choice]


@handle_errors
def main(argv=None) -> int:
    p = heldout_draws.parser(__doc__, "folder for the draws and the critic (resumable)")
    p.add_argument("--train-samples", type=int, default=12000,
                   help="drawn grids to train the critic on (default: 12000)")
    p.add_argument("--k-max", type=int, default=4, help="most candidates per image (default: 4)")
    p.add_argument("--epochs", type=int, default=8, help="critic epochs (default: 8)")
    a = p.parse_args(argv)
    s = heldout_draws.setup(a)
    model, held = s.model, s.held
    if a.train_samples <= held:
        raise SpikediffError(f"--train-samples must exceed the {held} held-out grids")

    real = encode_codes(model.vq, s.images, "cpu", s.progress)  # the holdout last, as trained
    gen = cached_tokens(s.work / "train-draws.npz", model, a.train_samples, 100, a.temperature,
                        s.refine, s.progress)
    critic, history = train_critic(real, gen, held, model.denoiser.mask_id, a.epochs,
                                   progress=s.progress)

    pool = cached_tokens(s.work / "pool.npz", model, a.n * a.k_max, 200, a.temperature, s.refine,
                         s.progress)
    net, cache, ref = s.reference(a)
    feats = metrics.features_resumable(net, decode_tokens(model.vq, pool, 250), cache,
                                       f"critic-pool-{s.work.name}-{len(pool)}",
                                       progress=s.progress)
    logit = critic.logits(pool)
    rows = []
    for k in range(1, a.k_max + 1):
        for gamma in ([1.0] if k == 1 else [0.5, 1.0, 2.0, 100.0]):
            fid = fid_of(feats[pick(logit, a.n, k, gamma).numpy()], ref)
            rows.append({"k": k, "gamma": gamma, "heldout_fid": round(fid, 2)})
            print(rows[-1], flush=True)
    order = logit.argsort(descending=True).numpy()
    ranked = {"top_n": fid_of(feats[order[:a.n]], ref), "bottom_n": fid_of(feats[order[-a.n:]], ref)}
    ranked = {key: round(v, 2) for key, v in ranked.items()}
    print("pool ranked by the critic:", ranked)
    result = {"checkpoint": a.checkpoint, "critic_history": history, "n": a.n,
              "train_samples": a.train_samples, "heldout_images": held, "rows": rows,
              "pool_ranked": ranked, "sampling": s.sampling(a)}
    if a.json:
        write_text(a.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
