"""Training and sampling throughput of the `paper` and `default` presets.

Each measurement runs in its own process so that its peak memory (max RSS)
is its own. Training: images/s of forward + backward + AdamW step on random
28x28 images (stage 1) or random code grids (stage 2), median of --repeats
timed steps after one warm-up step; stage 2 includes the update of the
denoiser's weight average where the preset keeps one (its median time alone is
printed too). Sampling: images/s of full generation (all diffusion steps, then
decoding).

    python benchmarks/throughput.py            # CPU, both presets
    python benchmarks/throughput.py --device cuda
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --presets default --distributed 2

--distributed N adds training rows of N processes (torchrun on this machine,
gloo on CPUs, NCCL on GPUs) sharing the preset's global batch, each with
batch/N, synced batch norm and averaged gradients as `spikediff train` runs
them, beside the one-process rows; on a CPU give each process one thread
(OMP_NUM_THREADS=1), so N processes use N cores against the one process's one.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2


def measure(preset: str, what: str, device: str, repeats: int) -> dict:
    from spikediff import ema
    from spikediff.config import load_config
    from spikediff.diffusion import diffusion_loss
    from spikediff.model import build_model
    from spikediff import distributed

    device = distributed.init(device)  # one of N processes under torchrun; else nothing
    torch.manual_seed(0)
    cfg = load_config(preset)
    model = build_model(cfg, 1, 28).to(device)
    distributed.sync_batchnorm(model.vq)
    distributed.sync_batchnorm(model.denoiser)
    bs = cfg.train.batch_size
    shard = (distributed.rank(), distributed.world())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ema_times = []  # the weight average's update, where stage 2 keeps one
    if what == "sample":
        model.eval()
        n = 8 if preset == "paper" else 64  # the paper model samples ~100x slower on a CPU
        step = lambda: model.generate(n, generator=torch.Generator().manual_seed(0),  # noqa: E731
                                      device=device)
    else:
        net = model.vq if what == "vq" else model.denoiser
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
        x = distributed.shard(torch.rand(bs, 1, 28, 28, device=device))
        tokens = distributed.shard(torch.randint(0, cfg.vq.codebook_size, (bs, 7, 7),
                                                 device=device))
        avg = ema.averaged(net, cfg.train.ema_decay) if what == "denoiser" and cfg.train.ema_decay \
            else None

        def step():
            out = model.vq(x) if what == "vq" else diffusion_loss(
                model.denoiser, tokens, model.diffusion_steps, model.denoiser.mask_id, shard)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            distributed.average_gradients(net.parameters())
            opt.step()
            if avg is not None:
                sync()
                t0 = time.perf_counter()
                avg.update_parameters(net)
                sync()
                ema_times.append(time.perf_counter() - t0)
        n = bs
    step()
    times = []
    for _ in range(repeats):
        sync()
        distributed.barrier()  # every rank's step starts together
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(distributed.from_main(times))  # rank 0's clock
    extra = {"ema_update_ms": 1e3 * statistics.median(ema_times)} if ema_times else {}
    return extra | {"preset": preset, "what": what, "batch": n, "images_per_s": n / med,
            "runs": repeats, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "device": device,
            "processes": distributed.world()}


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", default="default,paper")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--distributed", type=int, metavar="N", help="also train on N processes")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "WHAT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        from spikediff import distributed
        row = measure(*a.one, a.device, a.repeats)
        if distributed.is_main():
            print(json.dumps(row))
        distributed.shutdown()
        return
    rows = []
    jobs = [(preset, what, 1) for preset in a.presets.split(",")
            for what in ("vq", "denoiser", "sample")]
    if a.distributed:
        jobs += [(preset, what, a.distributed) for preset in a.presets.split(",")
                 for what in ("vq", "denoiser")]
    for preset, what, procs in jobs:
        reps = a.repeats if preset != "paper" else (1 if what == "sample" else 3)
        launcher = [sys.executable] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={procs}"]
        out = subprocess.run([*launcher, __file__, "--one", preset, what, "--device",
                              a.device, "--repeats", str(reps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{preset:8s} {what:9s} batch {r['batch']:4d}  {procs} process"
              f"{'es' if procs > 1 else '  '}  {r['images_per_s']:9.1f} img/s "
              f"(median of {r['runs']})  peak RSS {r['peak_rss_mb']:7.0f} MB"
              + (f"  (weight-average update {r['ema_update_ms']:.1f} ms of each step)"
                 if "ema_update_ms" in r else ""), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
