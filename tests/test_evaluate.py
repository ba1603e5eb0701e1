"""`spikediff eval` end to end, with a tiny stand-in for the FID network."""
import json
import math

import pytest
import torch

from spikediff.cli import main


def _script(name: str):
    """A benchmarks/ script, imported as a module."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyFeatures(torch.nn.Module):
    """[N, 3, 299, 299] -> [N, 2048]: pooled random projections (not Inception)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2048, 8, stride=8)

    def forward(self, x):
        return torch.relu(self.conv(torch.nn.functional.avg_pool2d(x, 4))).mean((2, 3))


def save_scripted(module, path) -> None:
    """The FID network is a TorchScript file (SPEC 3), so its stand-in is one
    too; torch deprecates the scripting API that writes one (not the loading)."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        torch.jit.script(module).save(str(path))


def test_eval_cli_writes_json(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny_fid.pt"
    save_scripted(TinyFeatures(), weights)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(run),
                 "--preset", "tiny", "--no-progress"]) == 0
    out = tmp_path / "r.json"
    args = ["eval", "--checkpoint", str(run / "checkpoint.pt"), "--dataset", "mnist",
            "--data-root", str(tiny_mnist), "--n", "20", "--steps", "3", "--fid-weights",
            str(weights), "--json", str(out), "--no-progress"]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["fid"]["n_samples"] == 20 and r["fid"]["value"] > 0
    assert "all 32 images" in r["fid"]["reference"]
    assert "TF-Inception" not in r["network"]  # the stand-in is not called the standard one
    assert 0 <= r["reconstruction"]["ssim"] <= 1 and r["reconstruction"]["n"] == 32
    assert "paper_protocol_fid" not in r  # fewer than 1,280 samples: no paper line
    text = capsys.readouterr().out
    assert "FID" in text and "20 samples" in text
    assert "fid" not in r["reconstruction"]  # recon FID only when asked for
    # the second run reuses cached reference and sample features: same numbers
    assert main(args[:-3] + ["--json", str(tmp_path / "r2.json"), "--recon-fid",
                             "--no-progress"]) == 0
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert r2["fid"] == r["fid"]
    assert math.isfinite(r2["reconstruction"]["fid"]) and r2["reconstruction"]["fid"] > 0
    assert f"FID {r2['reconstruction']['fid']:.2f} (32 test images)" in capsys.readouterr().out


def test_eval_errors(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIKEDIFF_FID_WEIGHTS", str(tmp_path / "missing.pt"))
    code = main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data-root",
                 str(tiny_mnist)])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


def tiny_run(tiny_mnist, tmp_path, monkeypatch, train_toml="", *flags):
    """(checkpoint, FID stand-in file) of a tiny run with `train_toml` in its
    [train] table, with a fresh feature cache."""
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny_fid.pt"
    save_scripted(TinyFeatures(), weights)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\n" + train_toml)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(run),
                 "--preset", "tiny", "--config", str(cfg), *flags, "--no-progress"]) == 0
    return run / "checkpoint.pt", weights


def tiny_ema_run(tiny_mnist, tmp_path, monkeypatch, train_toml):
    """tiny_run, keeping a weight average."""
    return tiny_run(tiny_mnist, tmp_path, monkeypatch, "ema_decay = 0.9\n" + train_toml)


def test_select_only_tunes_on_held_out_images_per_denoiser_weights(tiny_mnist, tmp_path,
                                                                    monkeypatch, capsys):
    from spikediff import evaluate
    ckpt, weights = tiny_ema_run(tiny_mnist, tmp_path, monkeypatch, "holdout = 16\n")
    reference = evaluate.reference_features

    def no_test_split(*args, **kw):
        assert args[4] != "test", "--select-only must not touch the test split"
        return reference(*args, **kw)
    monkeypatch.setattr(evaluate, "reference_features", no_test_split)
    results = {}
    for w in ("ema", "raw"):
        out = tmp_path / f"{w}.json"
        assert main(["eval", "--checkpoint", str(ckpt), "--data-root",
                     str(tiny_mnist), "--temperatures", "0.8", "--select-n", "8", "--steps", "3",
                     "--select-only", "--weights", w, "--fid-weights", str(weights), "--json",
                     str(out), "--no-progress"]) == 0
        results[w] = json.loads(out.read_text())
        text = capsys.readouterr().out
        assert f"({w} denoiser weights)" in text and "temperature 0.8:" in text
        assert "FID of 8 samples vs the last 16 train images" in text
    # each denoiser's samples are cached apart (images and features)
    for w in ("ema", "raw"):
        assert len(list((tmp_path / "cache").rglob(f"samples-*-{w}-n8-*.npz"))) == 2, w
    assert all("fid" not in r for r in results.values())
    # refined samples are scored and cached apart from the plain ones
    out = tmp_path / "refined.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(tiny_mnist),
                 "--temperatures", "0.8", "--select-n", "8", "--steps", "3", "--select-only",
                 "--refine-steps", "2", "--fid-weights", str(weights), "--json", str(out),
                 "--no-progress"]) == 0
    refined = json.loads(out.read_text())
    assert refined["refine"] == {"steps": 2, "fraction": 0.2, "temperature": 0.5}
    assert ("refinement: 2 steps, each redrawing 0.2 of the tokens at temperature 0.5"
            in capsys.readouterr().out)
    assert len(list((tmp_path / "cache").rglob("samples-*-ema-n8-*-refine2x0.2T0.5-*.npz"))) == 2
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root",
                 str(tiny_mnist), "--select-only"]) == 2
    assert "give them" in capsys.readouterr().err


def test_quality_table_script_with_either_denoiser_weights(tiny_mnist, tmp_path, monkeypatch,
                                                           capsys):
    quality = _script("quality")
    ckpt, weights = tiny_ema_run(tiny_mnist, tmp_path, monkeypatch, "")
    ck, res = str(ckpt), tmp_path / "results"
    common = ["--data-root", str(tiny_mnist), "--n", "8", "--temperatures", "1.0",
              "--fid-weights", str(weights), "--results", str(res)]
    assert quality.main([f"mnist:avg={ck}", *common]) == 0
    assert quality.main([f"mnist:last={ck}", "--weights", "raw", *common]) == 0
    assert quality.main([f"mnist:refined={ck}", "--refine-steps", "2", *common]) == 0
    rows = {w: json.loads((res / f"quality_{w}.json").read_text())
            for w in ("avg", "last", "refined")}
    assert rows["avg"]["denoiser_weights"] == "ema" and rows["last"]["denoiser_weights"] == "raw"
    assert rows["avg"]["fid"]["n_samples"] == 8 and rows["avg"]["T"] == 2
    assert "refine" not in rows["avg"] and rows["refined"]["refine"]["steps"] == 2
    md = (res / "quality.md").read_text()
    assert "| avg | " in md and "| last | " in md and md.count("averaged denoiser weights") == 2
    assert md.count("2 refinement steps of 0.2 at T 0.5") == 1
    assert quality.main([f"mnist:avg={ck}", *common]) == 0  # done rows are skipped
    assert "exists, skipped" in capsys.readouterr().out


def test_vq_recon_script_compares_stage_one_runs_on_held_out_images(tiny_mnist, tmp_path,
                                                                    monkeypatch, capsys):
    vq_recon = _script("vq_recon")
    ckpt, weights = tiny_run(tiny_mnist, tmp_path, monkeypatch, "holdout = 16\n", "--stage", "vq")
    out = tmp_path / "r.json"
    args = [str(ckpt), "--data-root", str(tiny_mnist), "--fid-weights",
            str(weights), "--no-progress"]
    assert vq_recon.main([*args, "--json", str(out)]) == 0
    [r] = json.loads(out.read_text())
    assert r["split"] == "holdout" and r["n"] == 16 and r["vq_epochs"] == 1
    assert r["fid"] > 0 and 0 < r["mse"] and 0 <= r["ssim"] <= 1
    assert "(N=16)" in capsys.readouterr().out
    assert vq_recon.main([*args, "--split", "test"]) == 0
    assert "(N=32)" in capsys.readouterr().out
    assert vq_recon.main([str(tmp_path / "none.pt"), "--fid-weights", str(weights)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_denoiser_nll_script_is_paired_and_scaled_to_nats_per_token(tiny_mnist, tmp_path, capsys):
    import pytest

    from spikediff import checkpoint
    nll = _script("denoiser_nll")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nholdout = 16\n")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(run),
                 "--preset", "tiny", "--config", str(cfg), "--no-progress"]) == 0
    # A denoiser whose logits are all 0 predicts log K nats for every masked token,
    # and so does the bound in expectation (its N/t weights undo the t/N masking
    # rate); the estimate's sampling spread is about 1.7 % at 16 x 20 draws.
    ckpt = checkpoint.load(run / "checkpoint.pt")
    for k in ("head.weight", "head.bias"):
        ckpt.denoiser[k].zero_()
    flat = tmp_path / "flat.pt"
    checkpoint.atomic_save(ckpt, flat)
    out = tmp_path / "r.json"
    args = ["--data-root", str(tiny_mnist), "--repeats", "20"]
    assert nll.main([str(run / "checkpoint.pt"), str(flat), str(run / "checkpoint.pt"), *args,
                     "--json", str(out)]) == 0
    trained, zero, again = json.loads(out.read_text())
    assert zero["nll_bound_nats_per_token"] == pytest.approx(math.log(16), rel=0.06)
    assert zero["masked_ce"] == pytest.approx(math.log(16), rel=1e-5)
    assert trained == again and trained["n_images"] == 16 and trained["loss"] == "elbo"
    assert trained["nll_bound_nats_per_token"] != zero["nll_bound_nats_per_token"]
    assert "| elbo | 1 |" in capsys.readouterr().out
    vq_only = tmp_path / "vq"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(vq_only),
                 "--preset", "tiny", "--stage", "vq", "--no-progress"]) == 0
    capsys.readouterr()
    assert nll.main([str(vq_only / "checkpoint.pt"), *args]) == 2
    assert "no denoiser weights" in capsys.readouterr().err


def test_runs_sharing_a_denoiser_draw_their_tokens_once(tiny_mnist, tmp_path, monkeypatch,
                                                         capsys):
    """A decoder-stage run's samples are its source's token grids, decoded by its
    own decoder: the eval draws them once, for either checkpoint."""
    from spikediff import checkpoint, evaluate, metrics
    from spikediff.diffusion import Refinement
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    first, dec = tmp_path / "a", tmp_path / "dec"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out",
                 str(first), "--preset", "tiny", "--no-progress"]) == 0
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(dec),
                 "--preset", "tiny", "--finetune", str(first / "checkpoint.pt"), "--stage",
                 "decoder", "--epochs-decoder", "1", "--no-progress"]) == 0
    a, b = (checkpoint.load_model(p / "checkpoint.pt") for p in (first, dec))
    other = checkpoint.load_model(first / "checkpoint.pt")
    other.denoiser.head.bias.data += 1e-3  # another denoiser: another hash
    assert evaluate.denoiser_id(a) == evaluate.denoiser_id(b) != evaluate.denoiser_id(other)
    draws = []
    real = evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda *args, **kw: draws.append(1) or real(*args, **kw))
    cache = metrics.FeatureCache()
    args = (6, 0.9, 3, 0, 4, "cpu", False, Refinement(1))
    imgs_a = evaluate.sampled_images(cache, a, *args)
    imgs_b = evaluate.sampled_images(cache, b, *args)
    assert len(draws) == 1  # b decoded a's cached tokens
    hit = cache.get(f"tokens-{evaluate.denoiser_id(a)}-n6-T0.9-s3-refine1x0.2T0.5-seed0{evaluate.DRAWS}-b4")
    tokens = torch.from_numpy(hit["tokens"])
    assert torch.allclose(imgs_b, torch.cat([b.vq.decode(tokens[:4]), b.vq.decode(tokens[4:])]))
    assert torch.allclose(imgs_a, real(a, 6, temperature=0.9, steps=3, seed=0, batch_size=4,
                                       progress=False, refine=Refinement(1))[0])
    assert not torch.allclose(imgs_a, imgs_b)  # the decoders differ
    evaluate.sampled_images(cache, a, 6, 0.9, 3, 1, 4, "cpu", False, Refinement(1))
    assert len(draws) == 2  # another seed is another draw
    # the grid of one draw decoded by both; runs with another denoiser are refused
    grid = _script("decoder_grid")
    ckpts = [str(p / "checkpoint.pt") for p in (first, dec)]
    assert grid.main([*ckpts, "--n", "8", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    other_run = tmp_path / "b"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out",
                 str(other_run), "--preset", "tiny", "--seed", "1", "--no-progress"]) == 0
    assert grid.main([ckpts[0], str(other_run / "checkpoint.pt"), "--n", "8", "--out",
                      str(tmp_path / "h.png")]) == 2
    assert "different denoisers" in capsys.readouterr().err and not (tmp_path / "h.png").exists()


def test_energy_pareto_script_measures_each_model_and_reuses_results(tiny_mnist, tmp_path,
                                                                      monkeypatch, capsys):
    bench = _script("energy_pareto")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, weights = tiny_run(tiny_mnist, tmp_path / "a", monkeypatch, "holdout = 16\n")
    sparse, _ = tiny_run(tiny_mnist, tmp_path / "b", monkeypatch,
                         "holdout = 16\nfiring_penalty = 5.0\n")
    out = tmp_path / "pareto"
    args = ["--checkpoints", str(plain), str(sparse), "--data-root", str(tiny_mnist),
            "--out", str(out), "--n", "8", "--n-energy", "2", "--refine-steps", "2",
            "--fid-weights", str(weights), "--no-progress"]
    assert bench.main(args) == 0
    rows = json.loads((tmp_path / "pareto.json").read_text())["rows"]
    assert [r["firing_penalty"] for r in rows] == [0.0, 5.0]
    for r in rows:
        assert r["heldout_n"] == 8 and r["energy_n"] == 2 and r["heldout_fid"] > 0
        assert r["denoiser_T"] == 2  # the tiny preset's time steps, recorded per model
        assert set(r["firing_rate"]) == {"denoiser.0", "denoiser.1"}
        assert r["ann_over_snn_45nm"] == pytest.approx(r["ann_45nm_mj"] / r["snn_45nm_mj"])
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "| penalty |" in capsys.readouterr().out.replace("checkpoint ", "")
    # a rerun with the same settings measures nothing again
    monkeypatch.setattr(bench, "measure_one", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert bench.main(args) == 0
    assert bench.main(["--checkpoints", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
