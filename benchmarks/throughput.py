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
    python benchmarks/throughput.py --threads 1 --ab ../wt-base --rounds 5  # A/B ratios

Timing: after one warm-up step, steps run until --seconds have passed (at
least --repeats of them); images/s is images over the wall time of those
steps, and CPU ms per image (process time, all threads) is printed beside it.
--threads N gives each measuring process N threads (torch and OpenMP).

--ab TREE (a git worktree of another commit, e.g. `git worktree add ../base
BASE`) measures each row alternately with this tree's and TREE's spikediff
(the same measuring code, one process each, PYTHONPATH set to the tree),
--rounds times, and prints the median of the per-round ratios this/TREE:
on a loaded machine only such alternating ratios mean anything.

--distributed N adds training rows of N processes (torchrun on this machine,
gloo on CPUs, NCCL on GPUs) sharing the preset's global batch, each with
batch/N, synced batch norm and averaged gradients as `spikediff train` runs
them, beside the one-process rows; on a CPU give each process one thread
(OMP_NUM_THREADS=1), so N processes use N cores against the one process's one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from spikediff.cliutil import ArgumentParser, handle_errors  # one error: line, exit 2


def measure(preset: str, what: str, device: str, repeats: int, seconds: float = 0.0,
            sample_batch: int | None = None) -> dict:
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
        n = sample_batch or (8 if preset == "paper" else 64)  # paper: ~100x slower on a CPU
        step = lambda steps=None: model.generate(  # noqa: E731
            n, generator=torch.Generator().manual_seed(0), device=device, steps=steps)
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
    step(2) if what == "sample" else step()  # warm-up (sampling: two diffusion steps)
    times, cpu = [], []
    start = time.perf_counter()
    more = True
    while more:
        sync()
        distributed.barrier()  # every rank's step starts together
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        # rank 0's clock decides, so every rank stops after the same step
        more = distributed.from_main(len(times) < repeats
                                     or time.perf_counter() - start < seconds)
    times = distributed.from_main(times)  # rank 0's clock
    med = statistics.median(times)
    extra = {"ema_update_ms": 1e3 * statistics.median(ema_times)} if ema_times else {}
    return extra | {"preset": preset, "what": what, "batch": n, "images_per_s": n * len(times) / sum(times),
            "median_images_per_s": n / med, "cpu_ms_per_image": 1e3 * sum(cpu) / (n * len(cpu)),
            "runs": len(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "device": device,
            "processes": distributed.world()}


def run_one(preset: str, what: str, procs: int, a, tree: Path | None = None) -> dict:
    """One measurement in its own process; `tree`: import spikediff from there."""
    reps = a.repeats if preset != "paper" else (1 if what == "sample" else 3)
    launcher = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={procs}"]
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(a.threads)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    opts = ["--seconds", str(a.seconds)] + (["--threads", str(a.threads)] if a.threads else []) \
        + (["--sample-batch", str(a.sample_batch)] if a.sample_batch else [])
    out = subprocess.run([*launcher, __file__, "--one", preset, what, "--device", a.device,
                          "--repeats", str(reps), *opts],
                         capture_output=True, text=True, check=True, env=env,
                         cwd=tree if tree is not None else None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(r: dict, procs: int) -> str:
    return (f"{r['preset']:8s} {r['what']:9s} batch {r['batch']:4d}  {procs} process"
            f"{'es' if procs > 1 else '  '}  {r['images_per_s']:9.2f} img/s "
            f"({r['runs']} steps)  {r['cpu_ms_per_image']:8.1f} CPU ms/img  "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB"
            + (f"  (weight-average update {r['ema_update_ms']:.1f} ms of each step)"
               if "ema_update_ms" in r else ""))


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", default="default,paper")
    p.add_argument("--what", default="vq,denoiser,sample", help="rows: vq, denoiser, sample")
    p.add_argument("--repeats", type=int, default=5, help="at least this many timed steps")
    p.add_argument("--seconds", type=float, default=0.0, help="time each row at least this long")
    p.add_argument("--threads", type=int, help="threads per measuring process")
    p.add_argument("--sample-batch", type=int, help="images per sampling batch "
                   "(default: 8 for paper, 64 otherwise)")
    p.add_argument("--distributed", type=int, metavar="N", help="also train on N processes")
    p.add_argument("--ab", type=Path, metavar="TREE",
                   help="alternate with the spikediff of TREE (a git worktree) and print ratios")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds per row")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "WHAT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.one:
        from spikediff import distributed
        row = measure(*a.one, a.device, a.repeats, a.seconds, a.sample_batch)
        if distributed.is_main():
            print(json.dumps(row))
        distributed.shutdown()
        return
    rows = []
    whats = a.what.split(",")
    jobs = [(preset, what, 1) for preset in a.presets.split(",") for what in whats]
    if a.distributed:
        jobs += [(preset, what, a.distributed) for preset in a.presets.split(",")
                 for what in whats if what != "sample"]
    here = Path(__file__).resolve().parent.parent
    for preset, what, procs in jobs:
        if a.ab is None:
            rows.append(run_one(preset, what, procs, a))
            print(describe(rows[-1], procs), flush=True)
            continue
        ratios, cpu_ratios, pair = [], [], {}
        for k in range(a.rounds):  # A B, B A, A B, ...: neither always goes first
            order = [("this", here), ("base", a.ab.resolve())][::1 if k % 2 == 0 else -1]
            for name, tree in order:
                pair[name] = run_one(preset, what, procs, a, tree)
            ratios.append(pair["this"]["images_per_s"] / pair["base"]["images_per_s"])
            cpu_ratios.append(pair["base"]["cpu_ms_per_image"] / pair["this"]["cpu_ms_per_image"])
            print(f"  round {k}: this {pair['this']['images_per_s']:.2f}  "
                  f"base {pair['base']['images_per_s']:.2f} img/s  ratio {ratios[-1]:.3f}",
                  flush=True)
        row = {"preset": preset, "what": what, "processes": procs, "rounds": a.rounds,
               "ratio_median": statistics.median(ratios), "ratios": ratios,
               "cpu_ratio_median": statistics.median(cpu_ratios),
               "this": pair["this"], "base": pair["base"], "base_tree": str(a.ab)}
        rows.append(row)
        print(f"{preset:8s} {what:9s} {procs} proc  this/base  wall {row['ratio_median']:.2f}x  "
              f"CPU {row['cpu_ratio_median']:.2f}x  (median of {a.rounds} alternating rounds)",
              flush=True)
    print(json.dumps(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(handle_errors(main)())
