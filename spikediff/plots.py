"""Image grids and loss curves, written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torchvision.utils import save_image


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_grid(images01: torch.Tensor, path, nrow: int = 8) -> None:
    _atomic(Path(path), lambda tmp: save_image(images01.clamp(0, 1), tmp, nrow=nrow,
                                               padding=2, pad_value=0.5, format="png"))


def save_loss_plot(history: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in history if history[s]]
    if not stages:
        return
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = history[stage]
        for key in rows[0]:
            if key not in ("epoch", "seconds", "images_per_s"):
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", label=key)
        ax.set(title=stage, xlabel="epoch", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
