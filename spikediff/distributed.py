"""Many processes (torchrun): the few collective operations training,
sampling and evaluation need, and nothing when there is one process.

`torchrun --nproc-per-node N -m spikediff train ...` sets RANK, WORLD_SIZE and
the rendezvous in the environment; `init()` joins the group (NCCL on GPUs,
gloo on CPUs) with a timeout, so a rank that dies ends the job with an error
instead of a hang. Without those variables everything here is a no-op and the
single-process path is the code it always was.

Data parallel training is exact, not approximate: each rank takes its slice
of the global batch (`shard`), draws the whole global batch's random numbers
and keeps its slice (diffusion.diffusion_loss), normalises with the global
batch's statistics (`SyncBatchNorm2d`), and the gradients are averaged over
ranks before each optimizer step (`average_gradients`, the reduction
DistributedDataParallel does). Every rank so holds the same weights, random
state and optimizer state after every step, equal to one process's at the
global batch size up to the order of float reductions.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import SpikediffError

# How long a rank waits for the others at a collective before giving up (a
# rank that died, a machine that hung); SPIKEDIFF_DIST_TIMEOUT (seconds) sets it.
DEFAULT_TIMEOUT_S = 1800


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> str:
    """Joins the process group where torchrun started several processes; returns
    the device this rank uses (cuda:LOCAL_RANK for "cuda")."""
    if not launched() or world() > 1:
        return device
    try:
        timeout = float(os.environ.get("SPIKEDIFF_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        assert timeout > 0
    except (ValueError, AssertionError):
        raise SpikediffError("SPIKEDIFF_DIST_TIMEOUT must be a number of seconds above 0, got "
                             f"{os.environ['SPIKEDIFF_DIST_TIMEOUT']!r}") from None
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout))
    return device


def shutdown() -> None:
    if world() > 1:
        dist.destroy_process_group()


@contextlib.contextmanager
def group(device: str = "cpu"):
    """`with group(device) as device:` one command's part in the process group
    (nothing without torchrun); a failed collective becomes one clear error."""
    device = init(device)
    try:
        yield device
    except RuntimeError as e:
        if world() > 1 and collective_failed(e):
            raise lost_contact(e) from None
        raise
    finally:
        shutdown()


def collective_failed(e: Exception) -> bool:
    """Whether `e` is a failed collective: gloo raises a plain RuntimeError
    when a peer's connection closes, NCCL and timeouts a DistError."""
    return isinstance(e, dist.DistError) or any(
        words in str(e) for words in ("Connection closed by peer", "Connection reset by peer",
                                      "Timed out", "timed out", "Socket Timeout"))


def lost_contact(e: Exception) -> SpikediffError:
    """The error of a collective that failed: another rank died or timed out."""
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return SpikediffError(f"rank {rank()} of {world()}: lost contact with the other ranks "
                          f"(one died, or waited past SPIKEDIFF_DIST_TIMEOUT): {first}")


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch (equal slices, in rank order): the
    union over ranks is the batch, as DistributedSampler splits one."""
    n = world()
    if len(batch) % n:
        raise SpikediffError(f"the batch size {len(batch)} does not split evenly over {n} "
                             "processes; choose a batch size that is a multiple of it")
    size = len(batch) // n
    return batch[rank() * size:(rank() + 1) * size]


def average_gradients(params) -> None:
    """Each gradient averaged over ranks, in one flat all-reduce."""
    if world() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor (a copy; no gradient)."""
    if world() == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world()


def sum_(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (a copy; no gradient)."""
    if world() == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def cat(t: torch.Tensor) -> torch.Tensor:
    """Equal-shaped tensors of every rank, concatenated in rank order."""
    if world() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every rank (a decision rank 0 takes alone)."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """fn() on rank 0 alone (the run folder's lock, say), its SpikediffError
    raised on every rank, so no rank waits for one that has given up."""
    err = None
    if is_main():
        try:
            fn()
        except SpikediffError as e:
            err = str(e)
    err = from_main(err)
    if err is not None:
        raise SpikediffError(err)


def barrier() -> None:
    if world() > 1:
        dist.barrier()


class _Summed(torch.autograd.Function):
    """The sum over ranks, differentiable: the gradient of a sum over ranks is
    the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _Summed.apply(x)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of per-rank means, differentiable: the global batch's
    mean, for a loss term that is not linear in it (the firing-rate penalty)."""
    return x if world() == 1 else all_reduce(x) / world()


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are the global batch's, over
    all ranks (torch's SyncBatchNorm runs on GPUs only; this one on gloo too).
    The same parameters and buffers as BatchNorm2d, so state dicts and
    checkpoints do not change; in eval mode, or with one process, it is
    BatchNorm2d. Two passes (mean, then the variance about it), as BatchNorm2d
    computes them, so the result differs from one process's in float rounding only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world() == 1:
            return super().forward(x)
        count = torch.tensor(float(x.numel() // x.shape[1] * world()), device=x.device)
        mu = all_reduce(x.sum((0, 2, 3))) / count
        var = all_reduce((x - mu.view(1, -1, 1, 1)).pow(2).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(
                    self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mu.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = (x - mu.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine \
            else y


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` synchronised over ranks (in place: the
    class changes, the weights stay); nothing with one process."""
    if world() > 1:
        for m in module.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = SyncBatchNorm2d
    return module


def seeded(seed: int, index: int) -> torch.Generator:
    """The generator of batch `index` of a run of draws from `seed`: the same
    whichever rank draws that batch, so N samples are one set for any world size."""
    import numpy as np
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

