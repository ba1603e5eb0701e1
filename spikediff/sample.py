"""Generate images from a checkpoint and write them as a grid and/or arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import distributed
from .atomic import atomic_path
from .config import Refinement
from .diffusion import sample_tokens
from .errors import SpikediffError
from .model import SpikingDiffusion
from .plots import save_grid
from .progress import bar as progress_bar


def generate(model: SpikingDiffusion, n: int, *, temperature=None, steps=None, seed=0,
             batch_size=64, device="cpu", progress=True, refine=None):
    """Images [n, C, H, W] in [0, 1] and token grids, drawn in batches from one
    seed; refine: a config.Refinement (None: the config's).

    Batch i draws from its own generator, derived from (seed, i): under
    torchrun each rank draws every world-th batch and all ranks get the union,
    which is the same n images for any number of processes."""
    model.to(device).eval()
    refine = model.config.diffusion.refinement() if refine is None else refine
    n_steps = (steps or model.diffusion_steps) + refine.steps
    starts = list(range(0, n, batch_size))[distributed.rank()::distributed.world()]
    mine = sum(min(batch_size, n - i) for i in starts)
    bar = progress_bar(total=mine * n_steps, desc="sampling", unit="tok-step",
                       show=progress and distributed.is_main(), leave=False, dynamic_ncols=True)
    drawn = {}
    for i in starts:
        b = min(batch_size, n - i)
        img, tok = model.generate(b, temperature=temperature, steps=steps,
                                  generator=distributed.seeded(seed, i // batch_size),
                                  device=device, on_step=lambda _: bar.update(b), refine=refine)
        drawn[i] = (img.cpu(), tok.cpu())
    bar.close()
    drawn = {i: batch for part in distributed.gather_objects(drawn) for i, batch in part.items()}
    images, tokens = zip(*(drawn[i] for i in sorted(drawn)))
    return torch.cat(images), torch.cat(tokens)


def cached_tokens(path, model: SpikingDiffusion, n: int, seed: int, temperature: float,
                  refine: Refinement, progress: bool = True) -> torch.Tensor:
    """n token grids [n, H, W] drawn on the CPU from one seed, saved at `path`
    (.npz) so that a rerun (a resumed benchmark) reuses them instead of
    drawing again."""
    path = Path(path)
    settings = np.array([n, seed, temperature, refine.steps, refine.fraction, refine.temperature],
                        dtype=np.float64)
    if path.exists():
        saved = np.load(path)
        if "settings" in saved and not np.array_equal(saved["settings"], settings):
            raise SpikediffError(f"{path} holds draws made with other settings (n, seed, "
                                 "temperature, refinement); move it away or use another folder")
        return torch.from_numpy(saved["tokens"])
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in progress_bar(range(0, n, 250), desc=f"drawing {path.stem}", show=progress):
        out.append(sample_tokens(model.denoiser, min(250, n - i), model.grid, model.denoiser.mask_id,
                                 model.diffusion_steps, None, temperature, g, "cpu", None, refine))
    tokens = torch.cat(out)
    save_npz(path, tokens=tokens, settings=settings)
    return tokens


def save_npz(path, **arrays) -> None:
    """Arrays as one .npz file at exactly `path` (numpy would append .npz to a
    file name without it: it writes to the open file instead)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})


def write_outputs(images: torch.Tensor, tokens: torch.Tensor, grid=None, npz=None) -> None:
    if grid is not None:
        save_grid(images, grid, nrow=max(1, int(len(images) ** 0.5)))
    if npz is not None:
        save_npz(npz, images=(images * 255).round().to(torch.uint8).numpy(), tokens=tokens.numpy())
