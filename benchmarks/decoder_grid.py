"""The same sampled token grids, decoded by several checkpoints' decoders.

For runs that share a denoiser (a decoder-stage run and the run it came from):
the tokens are drawn once, from the first checkpoint, and every checkpoint
decodes them, so the grid shows what the decoders alone change. Each row of
the PNG holds 8 samples; the checkpoints' rows follow each other in the order
given.

    python benchmarks/decoder_grid.py runs/ft/checkpoint.pt runs/dec/checkpoint.pt --out grid.png
"""
from __future__ import annotations


import torch

from spikediff import checkpoint
from spikediff.cliutil import add_refine_args, check_outputs, handle_errors, refine_settings
from spikediff.errors import SpikediffError
from spikediff.evaluate import denoiser_id
from spikediff.plots import save_grid
from spikediff.sample import generate
from spikediff.cliutil import ArgumentParser  # one error: line, exit 2


@handle_errors
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint.pt files sharing one denoiser")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=32, help="samples (a multiple of 8)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_refine_args(p)
    a = p.parse_args(argv)
    if a.n <= 0 or a.n % 8:
        raise SpikediffError(f"--n must be a positive multiple of 8, got {a.n}")
    check_outputs([a.out], a.force)
    models = [checkpoint.load_model(c) for c in a.checkpoints]
    if len({denoiser_id(m) for m in models}) > 1:
        raise SpikediffError("these checkpoints have different denoisers, so their samples "
                             "differ in more than the decoder; give runs that share one")
    first = models[0]
    _, tokens = generate(first, a.n, temperature=a.temperature, seed=a.seed,
                         refine=refine_settings(a, first.config.diffusion.refinement()))
    rows = [m.vq.decode(tokens).unflatten(0, (a.n // 8, 8)) for m in models]
    save_grid(torch.stack(rows, 1).flatten(0, 2), a.out, nrow=8)
    print(f"{a.n} token grids decoded by {len(models)} decoders -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
