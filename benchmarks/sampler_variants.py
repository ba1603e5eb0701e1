"""Do two common sampler changes lower sample FID: self-guidance, or one token per step?

On MNIST the committed model's decoder reconstructs the test split at FID 8.90
and its samples sit at 12.36, so what is left is in the token grids the
sampler draws. Two changes to how they are drawn, neither needing training:

- guide:W:RHO:WHERE: self-guidance, as classifier-free guidance without a
  class. Each denoiser call is made a second time on a weaker input, the same
  grid with a further fraction RHO of its revealed tokens masked (and t raised
  to match), and the logits become l + W (l - l_weak): what the revealed
  tokens add to the prediction is amplified. WHERE says which calls are
  guided: the 49 sampling steps (main), the refinement steps (refine) or both.
  Twice the denoiser's work on the guided calls.
- exact: reveal exactly ceil(masked / steps left) tokens per step, chosen at
  random (one per step at 49 steps on a 7x7 grid: a random-order
  autoregressive sampler), instead of each masked token with probability
  1 / (steps left), so no step reveals several tokens drawn independently.
- published: the sampler as it is, on the same seed.

Each variant draws --n grids with the committed recipe (temperature 1.0,
40 refinement steps of 0.1 at 0.3, by default) from the generator that
`spikediff eval --select-only --seed S` uses (seed S + 1, batches of 256), so
`published` repeats that command's number. FID is against the held-out
training images, never the test split. Every result is saved under --work
as its own file, so a killed run resumes and two processes can share a folder.

    python benchmarks/sampler_variants.py --data-root ../shared/datasets --work runs/sampler-variants \\
        --variants published,exact,guide:1.0:0.5:main --seeds 0,2
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project and the sibling heldout_draws.py

from spikediff.atomic import write_text  # noqa: E402
from spikediff.cli import handle_errors  # noqa: E402
from spikediff.diffusion import reveal_random, sample_tokens  # noqa: E402
from spikediff.errors import SpikediffError  # noqa: E402
from spikediff.evaluate import decode_tokens, fid_of  # noqa: E402
import heldout_draws  # noqa: E402

BATCH = 256  # as `spikediff eval`, so that `published` draws the same grids
WHERE = ("main", "refine", "both")


def reveal_exact(masked: torch.Tensor, u: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Exactly ceil(masked / steps left) of each grid's masked tokens, the
    ones with the lowest u (a uniformly random choice)."""
    k = torch.ceil(masked.flatten(1).sum(1) / steps_left).long().view(-1, 1, 1)
    score = torch.where(masked, u, torch.full_like(u, 2.0))  # never pick a revealed token
    rank = score.flatten(1).argsort(1).argsort(1).view(u.shape)
    return masked & (rank < k)


class SelfGuided:
    """The denoiser, guided on some of its calls. The sampler calls it once
    per step, so each batch makes `n_steps` sampling calls, then
    `refine_steps` refinement calls; `where` says which are guided. The
    weaker inputs' masks come from their own seeded generator, so unguided
    calls leave the sampler's draws as they are."""

    def __init__(self, denoiser, weight: float, rho: float, where: str, n_steps: int,
                 refine_steps: int):
        self.den, self.weight, self.rho, self.where = denoiser, weight, rho, where
        self.n_steps, self.per_batch, self.calls = n_steps, n_steps + refine_steps, 0
        self.g = torch.Generator().manual_seed(12345)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = "main" if self.calls % self.per_batch < self.n_steps else "refine"
        self.calls += 1
        logits = self.den(x, t).float()
        if self.where not in (phase, "both"):
            return logits
        mask_id = self.den.mask_id
        extra = (torch.rand(x.shape, generator=self.g) < self.rho) & (x != mask_id)
        weak_x = torch.where(extra, torch.full_like(x, mask_id), x)
        weak_t = (t + self.rho * (self.n_steps - t)).round().long().clamp(1, self.n_steps)
        return logits + self.weight * (logits - self.den(weak_x, weak_t).float())


def parse_variant(spec: str) -> dict:
    if spec in ("published", "exact"):
        return {"name": spec}
    parts = spec.split(":")
    try:
        if (parts[0] != "guide" or len(parts) != 4 or parts[3] not in WHERE
                or not 0 <= float(parts[2]) <= 1):
            raise ValueError
        return {"name": spec, "weight": float(parts[1]), "rho": float(parts[2]),
                "where": parts[3]}
    except ValueError:
        raise SpikediffError(f"unknown variant {spec!r}: use published, exact or "
                             f"guide:WEIGHT:RHO:WHERE with RHO in [0, 1] and WHERE one of "
                             f"{', '.join(WHERE)}")


def draw_variant(model, variant: dict, n: int, seed: int, temperature: float, refine,
                 progress: bool) -> torch.Tensor:
    den, N = model.denoiser, model.diffusion_steps
    denoise, reveal = den, reveal_random
    if variant["name"] == "exact":
        reveal = reveal_exact
    elif "weight" in variant:
        denoise = SelfGuided(den, variant["weight"], variant["rho"], variant["where"], N,
                             refine.steps)
    g = torch.Generator().manual_seed(seed + 1)  # as `spikediff eval --select-only --seed`
    out = []
    for i in tqdm(range(0, n, BATCH), desc=variant["name"], disable=not progress):
        out.append(sample_tokens(denoise, min(BATCH, n - i), model.grid, den.mask_id, N, None,
                                 temperature, g, "cpu", None, refine, reveal))
    return torch.cat(out)


@handle_errors
def main(argv=None) -> int:
    p = heldout_draws.parser(__doc__, "folder for the results, one file each (resumable)")
    p.add_argument("--variants", default="published,exact",
                   help="comma-separated: published, exact, guide:WEIGHT:RHO:WHERE "
                   "(WHERE: main, refine or both; default: published,exact)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds, as eval's --seed (default: 0)")
    a = p.parse_args(argv)
    variants = [parse_variant(v) for v in a.variants.split(",")]
    try:
        seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError:
        raise SpikediffError(f"--seeds takes comma-separated integers, not {a.seeds!r}")
    if a.n < 2:
        raise SpikediffError("--n must be at least 2 (FID needs a covariance)")
    s = heldout_draws.setup(a)
    net, cache, ref = s.reference(a)
    settings = {"checkpoint": str(Path(a.checkpoint).resolve()), "n": a.n, **s.sampling(a)}
    rows = []
    for seed in seeds:
        for v in variants:
            path = s.work / f"{v['name'].replace(':', '_')}-seed{seed}.json"
            if path.exists():
                row = json.loads(path.read_text())
                if row["settings"] != settings:
                    raise SpikediffError(f"{path} was measured with other settings "
                                         f"({row['settings']}); use another --work")
            else:
                tokens = draw_variant(s.model, v, a.n, seed, a.temperature, s.refine, s.progress)
                images = decode_tokens(s.model.vq, tokens, BATCH)
                feats = net.features(images, progress=s.progress)
                row = {"variant": v, "seed": seed, "heldout_fid": fid_of(feats, ref),
                       "settings": settings}
                write_text(path, json.dumps(row, indent=2))
            rows.append(row)
            print(f"seed {seed}  {v['name']:<24} held-out FID {row['heldout_fid']:.2f}  "
                  f"(N = {a.n} vs the last {s.held} train images)", flush=True)
    if a.json:
        write_text(a.json, json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
