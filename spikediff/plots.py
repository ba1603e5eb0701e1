"""Image grids and loss curves, written atomically."""
from __future__ import annotations

import torch
from torchvision.utils import save_image

from .atomic import atomic_path


def save_grid(images01: torch.Tensor, path, nrow: int = 8) -> None:
    with atomic_path(path) as tmp:
        save_image(images01.clamp(0, 1), tmp, nrow=nrow, padding=2, pad_value=0.5, format="png")


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
            if key not in ("epoch", "seconds", "images_per_s", "lr"):
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", label=key)
        ax.set(title=stage, xlabel="epoch", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def save_figure(fig, path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
