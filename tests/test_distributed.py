"""Training and sampling on 2 CPU processes (torchrun, gloo) against 1 process.

Each launch starts real processes (tests/dist_worker.py under torchrun), one
torch thread each. Runs are one step per stage (32 images, batch 32) so that
the comparisons stay within float rounding.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikediff import checkpoint
from spikediff.sample import generate

WORKER = Path(__file__).with_name("dist_worker.py")
LR = 1e-3  # the tiny preset's
TINY = ["--dataset", "mnist", "--preset", "tiny", "--limit", "32", "--batch-size", "32",
        "--no-progress"]


def launch(args, ranks: int, env=None, check=True, torchrun=()) -> subprocess.CompletedProcess:
    """`spikediff ARGS` as one process, or as `ranks` processes under torchrun
    (with the `torchrun` flags)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPIKEDIFF_DIST_TIMEOUT": "120", **(env or {})}
    env.pop("WORLD_SIZE", None)
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={ranks}", *torchrun, str(WORKER)] if ranks > 1
           else [sys.executable, str(WORKER)])
    out = subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True,
                         timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def noise_amplified(module: torch.nn.Module, prefix="") -> set[str]:
    """Biases of the layers whose outputs go straight into a training-mode batch
    norm: it subtracts them again, so their gradient is zero up to rounding, and
    Adam's first step (about lr * sign(g)) turns that rounding into +-lr."""
    names = set()
    for name, m in module.named_modules():
        kids = list(m.named_children())
        for (a, first), (_, second) in zip(kids, kids[1:]):
            if isinstance(second, torch.nn.BatchNorm2d) and getattr(first, "bias", None) is not None:
                names.add(f"{prefix}{name + '.' if name else ''}{a}.bias")
    return names


def assert_same_weights(a: dict, b: dict, amplified: set[str], what: str, lr=LR) -> None:
    """Equal up to float rounding, as one AdamW step shows it: the step is about
    lr * g / |g| per element, so an element whose gradient is within rounding of
    zero moves by anything up to lr either way. Those are the `amplified` biases
    and, elsewhere, a few elements (at most 5 % of a tensor); every element stays
    within one step of the other (2 lr). Without synced batch norm or averaged
    gradients most elements differ."""
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        assert diff.max() <= 2 * lr + 1e-6, f"{what}.{k} differs by {diff.max():.3g}"
        if k not in amplified:
            off = int((diff > 1e-5 + 1e-4 * b[k].double().abs()).sum())
            assert off <= diff.numel() // 20, f"{what}.{k}: {off} of {diff.numel()} differ"


def both(tmp_path, name, args, **kw):
    """The same command on 1 process and on 2; their checkpoints."""
    out = []
    for ranks in (1, 2):
        run = tmp_path / f"{name}{ranks}"
        launch(["train", *args, "--out", run], ranks, **kw)
        out.append(checkpoint.load(run / "checkpoint.pt"))
    return out


def test_one_step_on_two_ranks_equals_one_process_at_the_global_batch(tiny_mnist, tmp_path):
    from spikediff.adversarial import PatchDiscriminator
    from spikediff.model import build_model
    from spikediff.config import load_config
    model = build_model(load_config("tiny"), 1, 28)
    cfg = tmp_path / "c.toml"  # the weight average and the adversarial term on, from step 0
    cfg.write_text("[train]\nema_decay = 0.9\nadversarial_weight = 0.5\nadversarial_start = 0\n")
    common = ["--data-root", tiny_mnist, *TINY, "--config", cfg]
    # stage 1, from scratch: the VQ-SVAE and its discriminator
    one, two = both(tmp_path, "vq", [*common, "--stage", "vq", "--epochs-vq", "1"])
    assert (one.world_size, two.world_size) == (1, 2) and "2 processes" in two.hardware
    assert_same_weights(one.vq, two.vq, noise_amplified(model.vq), "vq")
    disc = noise_amplified(PatchDiscriminator(1))
    assert_same_weights(one.discriminator["net"], two.discriminator["net"], disc, "discriminator")
    assert one.history["vq"][0]["loss"] == pytest.approx(two.history["vq"][0]["loss"], rel=1e-5)
    # stage 2 on one VQ-SVAE (the one process's), so both see the same codes; the firing
    # penalty with a target is not linear in the rates: it needs the global batch's
    vq_run = tmp_path / "vq1" / "checkpoint.pt"
    one, two = both(tmp_path, "den", [*common, "--vq-from", vq_run, "--epochs-denoiser", "1",
                                      "--firing-penalty", "1", "--firing-target", "0.03"])
    assert one.history["denoiser"][0]["firing_penalty"] > 0
    amp = noise_amplified(model.denoiser)
    assert_same_weights(one.denoiser, two.denoiser, amp, "denoiser")
    assert_same_weights(one.denoiser_ema, two.denoiser_ema, {f"module.{k}" for k in amp}, "ema")
    assert torch.equal(one.rng, two.rng)  # every rank drew the global batch's random numbers
    # the decoder stage, on the shipped model: a VQ-SVAE trained one step puts one code
    # everywhere, which leaves the decoder's batch norms next to no variance to normalise
    one, two = both(tmp_path, "dec", [*common, "--finetune", checkpoint.SHIPPED, "--stage",
                                      "decoder", "--epochs-decoder", "1"])
    shipped = checkpoint.model_from(one, fold=False)
    assert_same_weights(one.vq, two.vq, noise_amplified(shipped.vq), "decoder stage: vq",
                        lr=one.config["train"]["lr"])


@pytest.fixture(scope="module")
def two_rank_runs(tiny_mnist, tmp_path_factory):
    """An uninterrupted 2-rank run (1 VQ epoch, 2 denoiser epochs), and the same
    run with rank 1 killed after denoiser epoch 1 (its output kept)."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = ["train", "--data-root", tiny_mnist, *TINY, "--epochs-vq", "1",
            "--epochs-denoiser", "2"]
    launch([*args, "--out", tmp / "full"], 2)
    # torchrun would stop rank 0 at its next look (every 0.1-5 s); looking every 20 s
    # leaves rank 0 the time to find the dead peer and say so itself
    killed = launch([*args, "--out", tmp / "killed"], 2, env={"SPIKEDIFF_TEST_DIE": "1:denoiser:1"},
                    check=False, torchrun=["--monitor-interval=20"])
    return tmp, killed


def test_killed_two_rank_run_ends_clearly_and_resumes_on_one_rank(two_rank_runs, tiny_mnist):
    tmp, killed = two_rank_runs
    assert killed.returncode != 0
    assert "error: rank 0 of 2: lost contact with the other ranks" in killed.stderr
    assert "Traceback" not in killed.stderr.split("error: rank 0")[0]  # one line, from rank 0
    state = checkpoint.load(tmp / "killed" / "checkpoint.pt")
    assert (state.stage, state.epoch, state.world_size) == ("denoiser", 1, 2)
    out = launch(["train", "--data-root", tiny_mnist, "--out", tmp / "killed", "--resume",
                  "--no-progress"], 1)
    assert "resuming a run of 2 processes on 1" in out.stderr
    full = checkpoint.load(tmp / "full" / "checkpoint.pt")
    resumed = checkpoint.load(tmp / "killed" / "checkpoint.pt")
    assert resumed.world_size == 1 and resumed.stage == full.stage == "done"
    assert resumed.step == full.step and len(resumed.history["denoiser"]) == 2
    # the same batches and random draws: the same random state afterwards, bit for bit,
    # and the weights of the uninterrupted run up to float rounding
    assert torch.equal(resumed.rng, full.rng)
    assert all(torch.equal(resumed.vq[k], full.vq[k]) for k in full.vq)
    from spikediff.config import load_config
    from spikediff.model import build_model
    amp = noise_amplified(build_model(load_config("tiny"), 1, 28).denoiser)
    assert_same_weights(resumed.denoiser, full.denoiser, amp, "denoiser")
    r, f = resumed.history["denoiser"][1], full.history["denoiser"][1]
    assert r["loss"] == pytest.approx(f["loss"], rel=1e-5) and r["lr"] == f["lr"]


def test_two_ranks_sample_exactly_the_images_of_one(tmp_path):
    arrays = []
    for ranks in (1, 2):  # the shipped model; 5 images in batches of 2: 3 batches, one short
        npz = tmp_path / f"s{ranks}.npz"
        launch(["sample", "--num-images", "5", "--batch-size", "2", "--steps", "4", "--seed", "7",
                "--out", tmp_path / f"s{ranks}.png", "--npz", npz, "--no-progress"], ranks)
        arrays.append(np.load(npz))
    assert len(arrays[0]["tokens"]) == 5
    assert np.array_equal(arrays[0]["images"], arrays[1]["images"])
    assert np.array_equal(arrays[0]["tokens"], arrays[1]["tokens"])
    assert (tmp_path / "s2.png").is_file()  # written once, by rank 0


def test_each_batch_draws_from_its_own_seeded_generator():
    """Batch i's images depend on (seed, i) only: the first n of 2n are the n."""
    model = checkpoint.load_model(None)
    kw = dict(steps=3, batch_size=2, progress=False)
    few, _ = generate(model, 2, seed=1, **kw)
    more, _ = generate(model, 4, seed=1, **kw)
    other, _ = generate(model, 2, seed=2, **kw)
    assert torch.equal(few, more[:2]) and not torch.equal(more[:2], more[2:])
    assert not torch.equal(few, other)


def test_two_ranks_evaluate_as_one(two_rank_runs, tiny_mnist, tmp_path):
    """600 samples: two feature chunks of 500, one per rank, gathered on rank 0."""
    from test_evaluate import TinyFeatures, save_scripted
    weights = tmp_path / "tiny_fid.pt"
    save_scripted(TinyFeatures(), weights)
    results = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}.json"
        launch(["eval", "--checkpoint", two_rank_runs[0] / "full" / "checkpoint.pt",
                "--dataset", "mnist", "--data-root", tiny_mnist, "--num-images", "600",
                "--steps", "3", "--fid-weights", weights, "--json", out, "--no-progress"],
               ranks, env={"SPIKEDIFF_CACHE": str(tmp_path / f"cache{ranks}")})
        results.append(json.loads(out.read_text()))
    one, two = results
    assert one["fid"]["value"] == pytest.approx(two["fid"]["value"], rel=1e-9)
    assert one["kid"] == pytest.approx(two["kid"], rel=1e-9)
    assert one["reconstruction"] == two["reconstruction"]
