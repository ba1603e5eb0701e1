"""An exponential moving average (EMA) of the denoiser's weights.

With a constant learning rate the last step's weights carry the noise of the
last few hundred batches; their running average samples better (README:
measured side by side). torch's AveragedModel does the bookkeeping, BN
statistics included (`use_buffers`). The decay warms up as min(decay,
(1 + n) / (10 + n)) over the first updates, so a short run's average is not
dominated by its random initial weights.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def averaged(net: torch.nn.Module, decay: float, state: dict | None = None) -> AveragedModel:
    def avg_fn(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * d + new * (1.0 - d) if avg.is_floating_point() else new

    ema = AveragedModel(net, avg_fn=avg_fn, use_buffers=True)
    if state is not None:
        ema.load_state_dict(state)
    return ema


def module_weights(state: dict) -> dict:
    """The averaged module's own state dict from a saved AveragedModel's."""
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
