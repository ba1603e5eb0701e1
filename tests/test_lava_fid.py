"""benchmarks/lava_fid.py: metric assembly, same-seed draws, resume (seconds, no Lava).

The Lava back end is replaced by the NIR back end (bit-identical to Norse in
float64), the FID network by a fixed random projection, so the logic - shared
host draws, lock-step counting, caching, the report - is checked without Lava
or the real network.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware import backends as B
from spikediff.checkpoint import Checkpoint, atomic_save
from spikediff.model import active_random_model

_spec = importlib.util.spec_from_file_location(
    "lava_fid", Path(__file__).resolve().parent.parent / "benchmarks" / "lava_fid.py")
lava_fid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lava_fid)

DIM = 4


def _proj(images):
    x = torch.as_tensor(images).double().flatten(1)
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(x.shape[1], DIM)))
    return (x @ w).numpy()


def test_assemble_on_fake_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(12, 1, 6, 6, generator=g)
    b = a.clone()
    b[0, 0, 0, 0] = 1.0 - a[0, 0, 0, 0]          # one pixel of one image differs
    c = torch.rand(12, 1, 6, 6, generator=g)
    images = {"lava": b, "norse_a": a, "norse_b": c}
    ta = torch.zeros(12, 2, 2, dtype=torch.long)
    tb = ta.clone()
    tb[3, 1, 1] = 5                                 # one of 48 final tokens differs
    tokens = {"lava": tb, "norse_a": ta, "norse_b": ta}
    feats = {k: _proj(v) for k, v in images.items()}
    ref = _proj(torch.rand(40, 1, 6, 6, generator=g))
    lock = {"differing_draws": 3, "draws": 96, "decode_images": b, "decode_reference": a}
    r = lava_fid.assemble(images, tokens, feats, ref, lockstep=lock)

    assert r["n"] == 12
    d = abs(float(b[0, 0, 0, 0] - a[0, 0, 0, 0]))
    p = r["pixels_end_to_end"]
    assert p["max_abs"] == pytest.approx(d)
    assert p["mean_abs"] == pytest.approx(d / a.numel())
    assert p["images_with_identical_tokens"] == 11
    assert r["pixels_decode_only"]["max_abs"] == pytest.approx(d)
    assert r["tokens_end_to_end"]["differing"] == 1
    assert r["tokens_end_to_end"]["fraction"] == pytest.approx(1 / 48)
    assert r["token_draws_lockstep"]["fraction"] == pytest.approx(3 / 96)
    f = r["fid"]
    # a set against itself (up to one pixel) is far closer than an independent set
    assert abs(f["lava_vs_norse_same_seed"]) < 0.1 * f["norse_seed_a_vs_seed_b (floor)"]
    assert f["lava_vs_norse_seed_b"] > 10 * abs(f["lava_vs_norse_same_seed"])
    assert set(f) == {"lava_vs_norse_same_seed", "lava_vs_norse_seed_b",
                      "norse_seed_a_vs_seed_b (floor)",
                      "lava_vs_test_split", "norse_a_vs_test_split", "norse_b_vs_test_split"}
    assert set(r["kid"]) == set(f)
    assert "N = 12" in lava_fid.format_report(r)

    with pytest.raises(ValueError):
        lava_fid.assemble({**images, "lava": b[:5]}, tokens, feats, ref)


def test_batches_and_seeds():
    assert lava_fid.batches(7, 3) == [3, 3, 1]
    assert lava_fid.batches(6, 3) == [3, 3]
    seeds = {lava_fid.batch_seed(s, i) for s in (0, 1) for i in range(100)}
    assert len(seeds) == 200


class _FakeNet:
    sha256 = "f" * 64
    name = "fake projection"

    def __init__(self, *a, **k):
        pass

    def features(self, images01, batch_size=50, progress=False):
        return _proj(images01)


@pytest.fixture
def patched(tmp_path, monkeypatch):
    tiny = active_random_model("tiny", seed=0)
    ck = tmp_path / "tiny.pt"
    atomic_save(Checkpoint(config=tiny.config.to_dict(),
                           data={"channels": 1, "image_size": 28, "name": "mnist", "n_train": 0},
                           vq=tiny.vq.state_dict(), denoiser=tiny.denoiser.state_dict(),
                           stage="denoiser"), ck)
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("spikediff.metrics.FIDNetwork", _FakeNet)
    ref = _proj(torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    monkeypatch.setattr("spikediff.evaluate.reference_features", lambda *a, **k: (ref, None))
    calls = []

    def fake_lava(path, mode, record_layers=True, weights="single", scales="frozen"):  # = Norse, float64
        calls.append(mode)
        return B.NirBackend(path)
    monkeypatch.setattr(B, "LavaBackend", fake_lava)
    return ck, calls


def test_main_same_draws_and_resume(patched, tmp_path, capsys):
    ck, calls = patched
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(ck), "--n", "10", "--batch-size", "4", "--steps", "3",
            "--cache", str(tmp_path / "runs"), "--json", str(out), "--no-progress",
            "--data-root", str(tmp_path)]
    assert lava_fid.main(args) == 0
    r = json.loads(out.read_text())
    assert calls == ["fixed_pt"]
    assert r["n"] == 10 and r["n_requested"] == 10 and r["steps"] == 3
    # identical arithmetic + the same host draws = identical images and tokens
    assert r["token_draws_lockstep"]["differing"] == 0
    assert r["token_draws_lockstep"]["total"] == 10 * 3 * 49
    assert r["tokens_end_to_end"]["differing"] == 0
    assert r["pixels_end_to_end"]["max_abs"] < 1e-9
    assert r["pixels_decode_only"]["max_abs"] < 1e-9
    assert abs(r["fid"]["lava_vs_norse_same_seed"]) < 1e-6
    assert r["fid"]["norse_seed_a_vs_seed_b (floor)"] > 1e-6   # seed B draws other images
    assert r["wall_s"]["batches_generated_this_invocation"] == {"lava": 3, "norse_a": 3,
                                                                "norse_b": 3}
    # a second run loads every batch (no back end built) and gives the same numbers
    assert lava_fid.main(args) == 0
    r2 = json.loads(out.read_text())
    assert calls == ["fixed_pt"]
    assert r2["wall_s"]["batches_generated_this_invocation"] == {"lava": 0, "norse_a": 0,
                                                                 "norse_b": 0}
    assert r2["fid"] == r["fid"]


def test_time_budget_truncates_every_set(patched, tmp_path):
    ck, _ = patched
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(ck), "--n", "12", "--batch-size", "4", "--steps", "2",
            "--cache", str(tmp_path / "runs"), "--json", str(out), "--no-progress",
            "--data-root", str(tmp_path)]
    assert lava_fid.main(args + ["--n", "8"]) == 0       # batches 0 and 1 exist
    assert lava_fid.main(args + ["--time-budget", "0"]) == 0
    r = json.loads(out.read_text())
    assert r["stopped_by_time_budget"] and r["n"] == 8 and r["n_requested"] == 12
