"""Training, checkpoints, resume and the `spikediff` CLI on a tiny data set."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikediff import checkpoint
from spikediff.cli import main
from spikediff.config import Config, load_config
from spikediff.train import train


def tiny_cfg(**train):
    cfg = load_config("tiny")
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_train_then_sample_cli(tiny_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out", str(run),
                 "--preset", "tiny", "--no-progress"]) == 0
    for name in ("checkpoint.pt", "recon_e001.png", "samples_e001.png", "losses.png"):
        assert (run / name).is_file()
    ckpt = checkpoint.load(run / "checkpoint.pt")
    assert ckpt.stage == "done" and ckpt.config["preset"] == "tiny"
    assert ckpt.data["name"] == "mnist" and ckpt.data["n_train"] == 96
    grid, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "5", "--out",
                 str(grid), "--npz", str(npz), "--steps", "4", "--no-progress"]) == 0
    import numpy as np
    arrays = np.load(npz)
    assert arrays["images"].shape == (5, 1, 28, 28) and arrays["images"].dtype == np.uint8
    assert arrays["tokens"].shape == (5, 7, 7) and arrays["tokens"].max() < 16
    assert grid.stat().st_size > 100
    # same seed, same images; another seed, others
    again = tmp_path / "again.npz"
    main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "5", "--out",
          str(tmp_path / "a.png"), "--npz", str(again), "--steps", "4", "--no-progress"])
    assert (np.load(again)["tokens"] == arrays["tokens"]).all()
    # refinement redraws some of those tokens; bad settings are one clear error
    refined = tmp_path / "refined.npz"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "5", "--out",
                 str(tmp_path / "r.png"), "--npz", str(refined), "--steps", "4",
                 "--refine-steps", "3", "--refine-fraction", "0.5", "--no-progress"]) == 0
    assert (np.load(refined)["tokens"] != arrays["tokens"]).any()
    capsys.readouterr()
    for bad in (["--refine-steps", "-1"], ["--refine-steps", "2", "--refine-fraction", "0"]):
        assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--out",
                     str(tmp_path / "bad.png"), "--no-progress", *bad]) == 2
        err = capsys.readouterr().err
        assert "--refine-" in err and "Traceback" not in err
    assert not (tmp_path / "bad.png").exists()


def test_resume_replays_exactly(tiny_mnist, tmp_path):
    cfg = tiny_cfg(epochs_vq=2, epochs_denoiser=2)
    full = train(cfg, "mnist", tiny_mnist, tmp_path / "full", progress=False)
    # the same run, stopped after one epoch of each stage, then resumed
    part = tmp_path / "part"
    train(tiny_cfg(epochs_vq=2, epochs_denoiser=2), "mnist", tiny_mnist, part, stages=("vq",),
          progress=False)
    state = checkpoint.load(part / "checkpoint.pt")
    assert state.stage == "vq" and state.epoch == 2
    train(None, None, tiny_mnist, part, resume=True, progress=False)
    a, b = checkpoint.load(full), checkpoint.load(part / "checkpoint.pt")
    for key in ("vq", "denoiser"):
        for name, tensor in getattr(a, key).items():
            assert torch.equal(tensor, getattr(b, key)[name]), f"{key}.{name} differs after resume"


def test_resume_mid_stage_identical(tiny_mnist, tmp_path):
    full = train(tiny_cfg(epochs_vq=2, epochs_denoiser=0), "mnist", tiny_mnist, tmp_path / "f",
                 stages=("vq",), progress=False)
    half = tmp_path / "h"
    train(tiny_cfg(epochs_vq=1, epochs_denoiser=0), "mnist", tiny_mnist, half, stages=("vq",),
          progress=False)
    state = checkpoint.load(half / "checkpoint.pt")
    state.config["train"]["epochs_vq"] = 2  # as if the run had been killed after epoch 1
    checkpoint.atomic_save(state, half / "checkpoint.pt")
    train(None, None, tiny_mnist, half, stages=("vq",), resume=True, progress=False)
    a, b = checkpoint.load(full).vq, checkpoint.load(half / "checkpoint.pt").vq
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_extends_exactly(tiny_mnist, tmp_path, capsys):
    full = train(tiny_cfg(epochs_vq=1, epochs_denoiser=2), "mnist", tiny_mnist, tmp_path / "full",
                 progress=False)
    short = tmp_path / "short"
    train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist, short, progress=False)
    assert main(["train", "--out", str(short), "--resume", "--no-progress"]) == 2
    assert "pass --epochs-denoiser N with N > 1" in capsys.readouterr().err
    assert main(["train", "--out", str(short), "--resume", "--seed", "3", "--no-progress"]) == 2
    assert "--seed cannot change" in capsys.readouterr().err
    assert main(["train", "--out", str(short), "--resume", "--epochs-vq", "2", "--no-progress"]) == 2
    assert "VQ stage is over" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(short), "--resume",
                 "--epochs-denoiser", "2", "--no-progress"]) == 0
    a, b = checkpoint.load(full), checkpoint.load(short / "checkpoint.pt")
    assert b.stage == "done" and len(b.history["denoiser"]) == 2
    assert all(torch.equal(a.denoiser[k], b.denoiser[k]) for k in a.denoiser)


def test_cli_errors_are_clear(tiny_mnist, tmp_path, capsys):
    def run(*args):
        code = main(list(args))
        return code, capsys.readouterr().err

    code, err = run("train", "--dataset", "mnist", "--data-root", str(tmp_path / "nope"),
                    "--out", str(tmp_path / "r"), "--preset", "tiny", "--no-progress")
    assert code == 2 and "error:" in err and "Traceback" not in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, err = run("sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png"))
    assert code == 2 and "not a readable checkpoint" in err
    code, err = run("sample", "--checkpoint", str(tmp_path / "missing.pt"),
                    "--out", str(tmp_path / "x.png"))
    assert code == 2 and "no checkpoint at" in err
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"user's file")
    code, err = run("sample", "--checkpoint", str(bad), "--out", str(existing))
    assert code == 2 and "--force" in err and existing.read_bytes() == b"user's file"
    if not torch.cuda.is_available():
        code, err = run("sample", "--checkpoint", str(bad), "--out", str(tmp_path / "y.png"),
                        "--device", "cuda")
        assert code == 2
    code, err = run("train", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "r2"),
                    "--preset", "tiny", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "does not exist" in err


def test_output_into_a_closed_pipe_ends_quietly():
    """`spikediff info | head -1`: the reader goes away and the command stops
    without a traceback (the read end is closed before the command starts)."""
    read, write = os.pipe()
    os.close(read)
    r = subprocess.run([sys.executable, "-m", "spikediff", "info"], stdout=write,
                       stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    os.close(write)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr


def test_config_file_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[denoiser]\nchannels = [4, 4, 4]\n[train]\nlr = 0.01\n')
    cfg = load_config("tiny", f)
    assert cfg.denoiser.channels == (4, 4, 4) and cfg.train.lr == 0.01
    f.write_text('[train]\nlearning_rate = 1\n')
    import pytest
    from spikediff.config import ConfigError
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config("tiny", f)


def test_time_budget_ends_denoiser_stage_and_says_so(tiny_mnist, tmp_path):
    path = train(tiny_cfg(epochs_denoiser=3), "mnist", tiny_mnist, tmp_path / "b", progress=False,
                 time_budget_min=1e-6)
    ckpt = checkpoint.load(path)
    assert ckpt.stage == "done" and len(ckpt.history["denoiser"]) == 1
    assert ckpt.stopped_by_time_budget == {"after_epoch": 1, "of": 3}
    assert ckpt.config["train"]["epochs_denoiser"] == 1


def test_cosine_schedule_decays_and_resumes_exactly(tiny_mnist, tmp_path, monkeypatch, capsys):
    import pytest

    from spikediff.train import Trainer, lr_factor
    assert lr_factor("cosine", 0, 10) == 1 and abs(lr_factor("cosine", 5, 10) - 0.5) < 1e-12
    assert lr_factor("cosine", 10, 10) < 1e-12 and lr_factor("constant", 7, 10) == 1
    cfg = tiny_cfg(epochs_vq=2, epochs_denoiser=1, lr_schedule="cosine")
    full = checkpoint.load(train(cfg, "mnist", tiny_mnist, tmp_path / "full", progress=False))
    lrs = [r["lr"] for r in full.history["vq"]]
    assert lrs[0] < cfg.train.lr and lrs[1] < 0.05 * cfg.train.lr  # each epoch's last rate

    snapshot = Trainer._snapshot

    def killed_in_epoch_2(self, stage, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # before epoch 2 is saved: the checkpoint holds epoch 1
        snapshot(self, stage, epoch)
    monkeypatch.setattr(Trainer, "_snapshot", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, "mnist", tiny_mnist, tmp_path / "killed", progress=False)
    monkeypatch.setattr(Trainer, "_snapshot", snapshot)
    assert checkpoint.load(tmp_path / "killed" / "checkpoint.pt").epoch == 1
    resumed = checkpoint.load(train(None, None, tiny_mnist, tmp_path / "killed", resume=True,
                                    progress=False))
    for key in ("vq", "denoiser"):
        assert all(torch.equal(getattr(full, key)[k], getattr(resumed, key)[k])
                   for k in getattr(full, key)), key
    # Its rate has decayed for the epochs it was given: extending it is refused, clearly.
    assert main(["train", "--out", str(tmp_path / "full"), "--resume", "--epochs-denoiser", "3",
                 "--no-progress"]) == 2
    assert "cosine schedule" in capsys.readouterr().err


def test_config_values_are_checked(tmp_path):
    import pytest

    from spikediff.config import ConfigError
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr_schedule = "linear"\n')
    with pytest.raises(ConfigError, match="lr_schedule 'linear'.*constant, cosine"):
        load_config("tiny", f)
    f.write_text('[train]\nema_decay = 1.0\n')
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        load_config("tiny", f)
    # A removed setting: older checkpoints' configs still load where they hold
    # the one value that remains, and say why not otherwise.
    d = load_config("tiny").to_dict()
    d["diffusion"]["loss"] = "elbo"
    assert Config.from_dict(d) == load_config("tiny")
    d["diffusion"]["loss"] = "uniform"
    with pytest.raises(ConfigError, match="diffusion.loss = 'uniform' is no longer supported"):
        Config.from_dict(d)


def test_ema_weights_average_steps_resume_exactly_and_are_what_sampling_uses(tiny_mnist, tmp_path,
                                                                             capsys):
    from spikediff import ema
    # The average itself: warm-up decay, then the configured one; BN statistics too.
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = ema.averaged(net, 0.5)
    with torch.no_grad():
        avg.update_parameters(net)  # the first update copies
        w0 = net[0].weight.clone()
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(4.0)
        avg.update_parameters(net)  # n = 1: decay min(0.5, 2 / 11)
    d = 2 / 11
    assert torch.allclose(avg.module[0].weight, d * w0 + (1 - d) * (w0 + 1))
    assert torch.allclose(avg.module[1].running_mean, torch.full((2,), 4.0 * (1 - d)))

    cfg = tiny_cfg(epochs_vq=1, epochs_denoiser=2, ema_decay=0.9)
    full = checkpoint.load(train(cfg, "mnist", tiny_mnist, tmp_path / "full", progress=False))
    raw, avg = full.denoiser, ema.module_weights(full.denoiser_ema)
    assert raw.keys() == avg.keys()
    plain = checkpoint.load(train(tiny_cfg(epochs_vq=1, epochs_denoiser=2), "mnist", tiny_mnist,
                                  tmp_path / "plain", progress=False))
    assert plain.denoiser_ema is None  # the average leaves the training itself unchanged
    assert all(torch.equal(v, raw[k]) for k, v in plain.denoiser.items())
    assert any(not torch.equal(raw[k], avg[k]) for k in raw)
    # sampling and export load the average; --weights raw the last step's
    # (compared in the trained form: inference folds the first layer, fold.py)
    m = checkpoint.model_from(full, fold=False)
    assert all(torch.equal(v, avg[k]) for k, v in m.denoiser.state_dict().items())
    m = checkpoint.model_from(full, "raw", fold=False)
    assert all(torch.equal(v, raw[k]) for k, v in m.denoiser.state_dict().items())
    # the average continues exactly across an extension of a finished run
    short = tmp_path / "short"
    train(tiny_cfg(epochs_vq=1, epochs_denoiser=1, ema_decay=0.9), "mnist", tiny_mnist, short,
          progress=False)
    train(None, None, tiny_mnist, short, resume=True, progress=False,
          extend={"epochs_denoiser": 2})
    ext = checkpoint.load(short / "checkpoint.pt")
    for k, v in full.denoiser_ema.items():
        assert torch.equal(v, ext.denoiser_ema[k]), k
    assert main(["info", "--checkpoint", str(short / "checkpoint.pt")]) == 0
    assert "averaged weights (EMA decay 0.9)" in capsys.readouterr().out
    out = tmp_path / "raw.png"
    assert main(["sample", "--checkpoint", str(short / "checkpoint.pt"), "--weights", "raw",
                 "--n", "2", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert out.is_file()


def test_new_denoiser_on_a_trained_vq(tiny_mnist, tmp_path, capsys):
    first = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist, tmp_path / "a",
                  progress=False)
    src = checkpoint.load(first)
    run = tmp_path / "b"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run), "--preset", "tiny",
                 "--vq-from", str(first), "--epochs-denoiser", "2", "--no-progress"]) == 0
    new = checkpoint.load(run / "checkpoint.pt")
    assert new.stage == "done" and len(new.history["denoiser"]) == 2
    assert all(torch.equal(v, new.vq[k]) for k, v in src.vq.items())  # VQ untouched
    assert new.history["vq"] == src.history["vq"] and new.vq_from == str(first)
    assert new.data["holdout"] == src.data["holdout"]
    assert new.config["vq"] == src.config["vq"] and new.config["train"]["epochs_vq"] == 1
    assert not (run / "recon_e001.png").exists()  # no VQ epoch was trained
    for rec in new.history["denoiser"]:
        assert rec["loss"] == rec["elbo"] != rec["masked_ce"]
    assert main(["info", "--checkpoint", str(run / "checkpoint.pt")]) == 0
    assert f"VQ-SVAE taken over from: {first}" in capsys.readouterr().out
    # a VQ-only checkpoint whose stage 1 is unfinished, or another data set: clear errors
    vq_only = train(tiny_cfg(epochs_vq=2), "mnist", tiny_mnist, tmp_path / "c", stages=("vq",),
                    progress=False)
    run2 = tmp_path / "b2"  # a finished VQ-only run serves too
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run2), "--preset", "tiny",
                 "--vq-from", str(vq_only), "--no-progress"]) == 0
    state = checkpoint.load(vq_only)
    state.epoch = 1  # as if killed mid-stage
    checkpoint.atomic_save(state, vq_only)
    for args, message in [(["--vq-from", str(vq_only)], "no finished VQ-SVAE"),
                          (["--vq-from", str(first), "--dataset", "fashion-mnist"],
                           "trained on mnist"),
                          (["--vq-from", str(first), "--stage", "vq"], "cannot go with --stage vq"),
                          (["--vq-from", str(tmp_path / "none.pt")], "no checkpoint at")]:
        code = main(["train", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "d"),
                     "--preset", "tiny", "--no-progress", *args])
        assert code == 2 and message in capsys.readouterr().err, args


def test_finetune_starts_from_the_trained_denoiser(tiny_mnist, tmp_path, capsys):
    first = train(tiny_cfg(epochs_denoiser=2, ema_decay=0.5), "mnist", tiny_mnist, tmp_path / "a",
                  progress=False)
    src = checkpoint.load(first)
    start = {k.removeprefix("module."): v for k, v in src.denoiser_ema.items()
             if k.startswith("module.")}
    # the average, not the last step's weights, is where fine-tuning starts
    assert any(not torch.equal(start[k], v) for k, v in src.denoiser.items()
               if v.is_floating_point())
    # a config asking for another network is refused, not silently overruled
    (tmp_path / "net.toml").write_text("[denoiser]\nchannels = [4, 4]\n\n[train]\nlr = 0.0\n")
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "net"),
                 "--preset", "tiny", "--finetune", str(first), "--config",
                 str(tmp_path / "net.toml"), "--no-progress"]) == 2
    assert "sets [denoiser] channels, but --finetune keeps" in capsys.readouterr().err
    assert not (tmp_path / "net").exists()
    # A rate of 0 leaves the weights where they started (AdamW's decay scales
    # with the rate too), so this shows which ones were loaded.
    (tmp_path / "ft.toml").write_text("[train]\nlr = 0.0\n")
    run = tmp_path / "ft"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run), "--preset", "tiny",
                 "--finetune", str(first), "--config", str(tmp_path / "ft.toml"),
                 "--epochs-denoiser", "1", "--no-progress"]) == 0
    new = checkpoint.load(run / "checkpoint.pt")
    assert new.config["denoiser"] == src.config["denoiser"]
    assert new.config["diffusion"] == src.config["diffusion"]
    assert new.config["train"]["lr"] == 0.0 and len(new.history["denoiser"]) == 1
    assert all(torch.equal(v, new.vq[k]) for k, v in src.vq.items())
    params = dict(checkpoint.model_from(new, "raw", fold=False).denoiser.named_parameters())
    assert params and all(torch.equal(p, start[k]) for k, p in params.items())
    f = new.finetuned_from
    assert f["path"] == str(first) and f["weights"] == "ema" and f["denoiser_epochs"] == "2"
    # tables count both runs' training: "2+1" epochs, both times, both machines
    epochs, seconds, hardware = checkpoint.denoiser_training(new)
    assert epochs == "2+1" and checkpoint.denoiser_training(src)[0] == "2"
    assert seconds == src.seconds["denoiser"] + new.seconds["denoiser"]
    assert hardware == f"{src.hardware}, then {new.hardware}"
    # fine-tuning a fine-tuned run counts all three
    (tmp_path / "lr0.toml").write_text("[train]\nlr = 0.0\n")
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "ft3"),
                 "--preset", "tiny", "--finetune", str(run / "checkpoint.pt"), "--config",
                 str(tmp_path / "lr0.toml"), "--epochs-denoiser", "3", "--no-progress"]) == 0
    third = checkpoint.load(tmp_path / "ft3" / "checkpoint.pt")
    assert checkpoint.denoiser_training(third)[0] == "2+1+3"
    assert third.finetuned_from["weights"] == "raw"  # that run kept no average
    assert main(["info", "--checkpoint", str(run / "checkpoint.pt")]) == 0
    assert f"denoiser fine-tuned from: {first} (ema weights after 2 epochs" in capsys.readouterr().out
    # a rate above 0 moves them; --resume continues the fine-tuning run itself
    run2 = tmp_path / "ft2"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run2), "--preset", "tiny",
                 "--finetune", str(first), "--epochs-denoiser", "1", "--no-progress"]) == 0
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run2), "--resume",
                 "--epochs-denoiser", "2", "--no-progress"]) == 0
    moved = checkpoint.load(run2 / "checkpoint.pt")
    assert len(moved.history["denoiser"]) == 2 and moved.finetuned_from == {**f}
    assert not torch.equal(moved.denoiser["head.weight"], start["head.weight"])
    vq_only = train(tiny_cfg(epochs_vq=1), "mnist", tiny_mnist, tmp_path / "v", stages=("vq",),
                    progress=False)
    for args, message in [(["--finetune", str(vq_only)], "holds no trained denoiser"),
                          (["--finetune", str(first), "--vq-from", str(first)], "give one"),
                          (["--finetune", str(first), "--stage", "vq"], "cannot go with --stage vq"),
                          (["--finetune", str(first), "--dataset", "kmnist"], "trained on mnist")]:
        code = main(["train", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "d"),
                     "--preset", "tiny", "--no-progress", *args])
        assert code == 2 and message in capsys.readouterr().err, args


def test_finetune_at_fewer_time_steps(tiny_mnist, tmp_path, capsys):
    """[denoiser] T is the one network setting a fine-tune may change: the same
    weights, trained on at another number of time steps (issue 25: synaptic
    operations per call scale with T)."""
    first = train(tiny_cfg(epochs_denoiser=1), "mnist", tiny_mnist, tmp_path / "a", progress=False)
    src = checkpoint.load(first)
    assert src.config["denoiser"]["T"] == 2
    (tmp_path / "t1.toml").write_text("[train]\nlr = 0.0\n\n[denoiser]\nT = 1\n")
    run = tmp_path / "t1"
    common = ["--data-root", str(tiny_mnist), "--preset", "tiny", "--no-progress"]
    assert main(["train", *common, "--out", str(run), "--finetune", str(first), "--config",
                 str(tmp_path / "t1.toml"), "--epochs-denoiser", "1"]) == 0
    new = checkpoint.load(run / "checkpoint.pt")
    assert new.config["denoiser"] == {**src.config["denoiser"], "T": 1}
    model = checkpoint.model_from(new)
    assert model.denoiser.cfg.T == 1
    grid = torch.zeros(2, *model.grid, dtype=torch.long)
    assert model.denoiser.spikes(grid, torch.zeros(2, dtype=torch.long))[0].shape[0] == 1
    # the repeated command resumes; the decoder stage cannot change the denoiser's T
    assert main(["train", *common, "--out", str(run), "--resume", "--config",
                 str(tmp_path / "t1.toml"), "--epochs-denoiser", "2"]) == 0
    assert checkpoint.load(run / "checkpoint.pt").config["denoiser"]["T"] == 1
    assert main(["train", *common, "--out", str(tmp_path / "dec"), "--finetune", str(first),
                 "--config", str(tmp_path / "t1.toml"), "--stage", "decoder",
                 "--epochs-decoder", "1"]) == 2
    assert "--stage decoder does not train the denoiser" in capsys.readouterr().err


def _decoding_side(vq_state: dict) -> dict:
    return {k: v for k, v in vq_state.items()
            if k.startswith(("spike_generator.", "decoder.", "readout."))}


def test_decoder_stage_trains_only_what_decodes_codes(tiny_mnist, tmp_path, capsys):
    first = train(tiny_cfg(epochs_denoiser=1, ema_decay=0.5), "mnist", tiny_mnist,
                  tmp_path / "a", progress=False)
    src = checkpoint.load(first)
    (tmp_path / "adv.toml").write_text("[train]\nadversarial_weight = 0.8\n")
    run = tmp_path / "dec"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run), "--preset", "tiny",
                 "--finetune", str(first), "--stage", "decoder", "--epochs-decoder", "2",
                 "--config", str(tmp_path / "adv.toml"), "--no-progress"]) == 0
    new = checkpoint.load(run / "checkpoint.pt")
    assert new.stage == "done" and len(new.history["decoder"]) == 2
    assert "adversarial" in new.history["decoder"][0]  # the term was on from the first step
    assert (run / "recon-decoder_e002.png").is_file() and new.discriminator is not None
    # the denoiser (raw and averaged) and everything that makes the codes stay bit for bit
    for key in ("denoiser", "denoiser_ema"):
        assert all(torch.equal(v, getattr(new, key)[k]) for k, v in getattr(src, key).items()), key
    moved = _decoding_side(src.vq)
    for k, v in src.vq.items():
        if k not in moved and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, new.vq[k]), k
    assert any(not torch.equal(v, new.vq[k]) for k, v in moved.items() if v.is_floating_point())
    a, b = checkpoint.model_from(src), checkpoint.model_from(new)
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(a.vq.encode(x), b.vq.encode(x))
    ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    (img_a, tok_a), (img_b, tok_b) = (a.generate(4, generator=ga, steps=4),
                                      b.generate(4, generator=gb, steps=4))
    assert torch.equal(tok_a, tok_b) and not torch.equal(img_a, img_b)
    # the record: where the model came from, and the denoiser's own training
    assert new.decoder_from == str(first) and len(new.history["denoiser"]) == 1
    assert checkpoint.denoiser_training(new) == checkpoint.denoiser_training(src)
    assert main(["info", "--checkpoint", str(run / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert f"decoder stage run on the whole model of: {first}" in out and "decoder: 2 epochs" in out
    # a finished decoder stage extends; the denoiser before it cannot
    (tmp_path / "const.toml").write_text("[train]\nepochs_decoder = 1\n")
    plain = tmp_path / "plain"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(plain), "--preset", "tiny",
                 "--finetune", str(first), "--stage", "decoder", "--config",
                 str(tmp_path / "const.toml"), "--no-progress"]) == 0
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(plain), "--resume",
                 "--epochs-decoder", "2", "--no-progress"]) == 0
    assert len(checkpoint.load(plain / "checkpoint.pt").history["decoder"]) == 2
    # a decoder stage on a decoder-stage run counts the earlier one's epochs and time
    again = tmp_path / "again"
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(again), "--preset", "tiny",
                 "--finetune", str(plain / "checkpoint.pt"), "--stage", "decoder",
                 "--config", str(tmp_path / "const.toml"), "--no-progress"]) == 0
    twice, once = checkpoint.load(again / "checkpoint.pt"), checkpoint.load(plain / "checkpoint.pt")
    epochs, seconds = checkpoint.decoder_training(twice)
    assert epochs == "2+1" and checkpoint.decoder_training(once)[0] == "2"
    assert seconds == pytest.approx(once.seconds["decoder"] + twice.seconds["decoder"])
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(again / "checkpoint.pt")]) == 0
    assert "its decoder had 2 decoder-stage epochs before" in capsys.readouterr().out
    for args, message in [
            (["--out", str(plain), "--resume", "--epochs-denoiser", "3"], "decoder stage came after"),
            (["--out", str(tmp_path / "e"), "--preset", "tiny", "--finetune", str(first),
              "--stage", "decoder"], "pass --epochs-decoder N"),
            (["--out", str(tmp_path / "e"), "--preset", "tiny", "--vq-from", str(first),
              "--stage", "decoder"], "--finetune CKPT --stage decoder")]:
        code = main(["train", "--data-root", str(tiny_mnist), "--no-progress", *args])
        assert code == 2 and message in capsys.readouterr().err, args


def test_combine_puts_one_runs_decoder_under_anothers_denoiser(tiny_mnist, tmp_path, capsys):
    first = train(tiny_cfg(epochs_denoiser=1), "mnist", tiny_mnist, tmp_path / "a", progress=False)
    common = ["--data-root", str(tiny_mnist), "--preset", "tiny", "--no-progress"]
    assert main(["train", *common, "--out", str(tmp_path / "dec"), "--finetune", str(first),
                 "--stage", "decoder", "--epochs-decoder", "1"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "den"), "--finetune", str(first),
                 "--epochs-denoiser", "1"]) == 0
    dec_path, den_path = tmp_path / "dec" / "checkpoint.pt", tmp_path / "den" / "checkpoint.pt"
    out = tmp_path / "both.pt"
    assert main(["combine", "--denoiser", str(den_path), "--decoder", str(dec_path),
                 "--out", str(out)]) == 0
    both, dec, den = (checkpoint.load(p) for p in (out, dec_path, den_path))
    assert all(torch.equal(v, both.vq[k]) for k, v in dec.vq.items())
    assert all(torch.equal(v, both.denoiser[k]) for k, v in den.denoiser.items())
    assert checkpoint.decoder_training(both) == checkpoint.decoder_training(dec)
    assert checkpoint.denoiser_training(both) == checkpoint.denoiser_training(den)
    assert checkpoint.vq_train_settings(both) == dec.config["train"] != den.config["train"]
    # its samples: the denoiser run's token grids, decoded as the decoder run decodes them
    models = [checkpoint.model_from(c) for c in (both, den, dec)]
    (img, tok), (_, tok_den) = (m.generate(4, generator=torch.Generator().manual_seed(0), steps=4)
                                for m in models[:2])
    assert torch.equal(tok, tok_den) and torch.equal(img, models[2].vq.decode(tok))
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(out)]) == 0
    assert f"the VQ-SVAE (decoder) of {dec_path}" in capsys.readouterr().out
    # a denoiser fine-tuned on a decoder-stage run keeps that decoder, and says so
    assert main(["train", *common, "--out", str(tmp_path / "den2"), "--finetune", str(dec_path),
                 "--epochs-denoiser", "1"]) == 0
    den2 = checkpoint.load(tmp_path / "den2" / "checkpoint.pt")
    assert checkpoint.decoder_training(den2) == checkpoint.decoder_training(dec)
    assert all(torch.equal(v, den2.vq[k]) for k, v in dec.vq.items())
    # refused: another VQ-SVAE's codes; an existing file, which stays as it was
    other = train(tiny_cfg(epochs_denoiser=1, seed=7), "mnist", tiny_mnist, tmp_path / "o",
                  progress=False)
    before = out.read_bytes()
    for args, message in [(["--denoiser", str(other), "--decoder", str(dec_path),
                            "--out", str(tmp_path / "x.pt")], "encode images differently"),
                          (["--denoiser", str(den_path), "--decoder", str(dec_path),
                            "--out", str(out)], "exists"),
                          (["--denoiser", str(tmp_path / "none.pt"), "--decoder", str(dec_path),
                            "--out", str(tmp_path / "y.pt")], "no checkpoint at")]:
        assert main(["combine", *args]) == 2 and message in capsys.readouterr().err, args
    assert out.read_bytes() == before and not (tmp_path / "x.pt").exists()


def test_three_stage_run_resumes_exactly(tiny_mnist, tmp_path):
    cfg = dict(epochs_vq=1, epochs_denoiser=1, epochs_decoder=2)
    full = train(tiny_cfg(**cfg), "mnist", tiny_mnist, tmp_path / "full", progress=False)
    a = checkpoint.load(full)
    assert a.stage == "done" and [len(a.history[s]) for s in ("vq", "denoiser", "decoder")] \
        == [1, 1, 2]
    # killed after the denoiser stage and one decoder epoch, then resumed
    part = tmp_path / "part"
    train(tiny_cfg(**cfg), "mnist", tiny_mnist, part, stages=("vq", "denoiser"), progress=False)
    assert checkpoint.load(part / "checkpoint.pt").stage == "denoiser"  # the decoder's to come
    train(tiny_cfg(**cfg | {"epochs_decoder": 1}), "mnist", tiny_mnist, tmp_path / "one",
          progress=False)
    state = checkpoint.load(tmp_path / "one" / "checkpoint.pt")
    state.stage, state.epoch = "decoder", 1
    state.config["train"]["epochs_decoder"] = 2
    checkpoint.atomic_save(state, part / "checkpoint.pt")
    train(None, None, tiny_mnist, part, resume=True, progress=False)
    b = checkpoint.load(part / "checkpoint.pt")
    assert b.stage == "done" and len(b.history["decoder"]) == 2
    assert all(torch.equal(v, b.vq[k]) for k, v in a.vq.items())


FINETUNED = checkpoint.SHIPPED


@pytest.mark.skipif(not FINETUNED.is_file(), reason="fine-tuned checkpoint not shipped")
def test_finetuned_checkpoint_is_the_shipped_vq_svae_with_its_record():
    """The best model: the base model's codes, its own denoiser (annealed 12
    epochs, then 4 with a firing-rate penalty) and decoder."""
    ck, base = checkpoint.load(FINETUNED), checkpoint.load(checkpoint.WEIGHTS_DIR / "mnist-base.pt")
    encoding = set(base.vq) - set(_decoding_side(base.vq))
    assert all(torch.equal(base.vq[k], ck.vq[k]) for k in encoding)
    assert not torch.equal(base.vq["readout.weight"], ck.vq["readout.weight"])
    assert checkpoint.denoiser_training(ck)[0] == "30+12+4"
    assert ck.config["train"]["firing_penalty"] == 0.01
    assert checkpoint.decoder_training(ck)[0] == "6"
    assert checkpoint.vq_train_settings(ck)["adversarial_weight"] == 0.8
    img, _ = checkpoint.model_from(ck).generate(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert img.shape == (2, 1, 28, 28) and 0 <= img.min() and img.max() <= 1


def test_lowenergy_checkpoint_is_the_best_model_at_one_time_step():
    """mnist-lowenergy.pt: mnist.pt's whole VQ-SVAE and sampling defaults, its
    denoiser trained on at T = 1 (what makes it cheap on a chip: docs/energy.md)."""
    low, best = checkpoint.load(checkpoint.WEIGHTS_DIR / "mnist-lowenergy.pt"), checkpoint.load(None)
    assert all(torch.equal(v, low.vq[k]) for k, v in best.vq.items())
    assert low.config["denoiser"] == {**best.config["denoiser"], "T": 1}
    assert checkpoint.sampling_settings(low) == checkpoint.sampling_settings(best)
    assert checkpoint.denoiser_training(low)[0] == "30+12+6" and low.optimizer is None
    model = checkpoint.model_from(low)
    grid = torch.zeros(2, *model.grid, dtype=torch.long)
    assert model.denoiser.spikes(grid, torch.zeros(2, dtype=torch.long))[0].shape[0] == 1


def test_shipped_default_samples_with_the_settings_it_was_tuned_with():
    """Every command without --checkpoint uses mnist.pt, and with no flags its
    tuned settings: temperature 1.0, 40 refinement steps of 0.1 at 0.3."""
    assert checkpoint.SHIPPED.name == "mnist.pt"
    ck = checkpoint.load(None)
    assert checkpoint.sampling_settings(ck) == {"temperature": 1.0, "refine_steps": 40,
                                                "refine_fraction": 0.1, "refine_temperature": 0.3}
    assert "held-out" in ck.sampling_note


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist", "cifar10"])
def test_data_set_checkpoint_is_picked_by_its_name_with_its_own_settings(dataset, tmp_path):
    """spikediff/weights/NAME.pt: a finished run on NAME whose temperature was chosen on
    held-out images, and `spikediff sample --dataset NAME` draws from it with no other flag."""
    path = checkpoint.shipped(dataset)
    if not path.is_file():
        pytest.skip(f"no {dataset} checkpoint shipped yet")
    ck = checkpoint.load(path)
    assert ck.data["name"] == dataset and ck.stage == "done"
    assert "held-out" in (ck.sampling_note or "")
    out = tmp_path / "s.png"
    assert main(["sample", "--dataset", dataset, "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert out.is_file()


def test_set_sampling_records_defaults_that_flags_override(tiny_mnist, tmp_path, capsys):
    run = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist, tmp_path / "a",
                progress=False)
    tuned = tmp_path / "tuned.pt"
    assert main(["set-sampling", "--checkpoint", str(run), "--out", str(tuned), "--temperature",
                 "0", "--refine-steps", "3", "--refine-temperature", "0", "--note", "by hand"]) == 0
    assert main(["info", "--checkpoint", str(tuned)]) == 0
    assert ("sampling defaults: temperature 0, then 3 refinement steps of 0.2 at 0 (by hand)"
            in capsys.readouterr().out)
    before, after = checkpoint.load(run), checkpoint.load(tuned)
    assert all(torch.equal(v, after.denoiser[k]) for k, v in before.denoiser.items())

    def drawn(*flags):
        out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}.npz"
        assert main(["sample", "--n", "4", "--out", str(out.with_suffix(".png")), "--npz",
                     str(out), "--no-progress", *flags]) == 0
        return np.load(out)["tokens"]
    # no flags: argmax draws, refined; the same as asking for them on the source
    same = ["--temperature", "0", "--refine-steps", "3", "--refine-temperature", "0"]
    assert np.array_equal(drawn("--checkpoint", str(tuned)), drawn("--checkpoint", str(run), *same))
    # flags override: asked for the source's settings, the draws are the source's
    src = ["--temperature", "1", "--refine-steps", "0"]
    assert np.array_equal(drawn("--checkpoint", str(tuned), *src), drawn("--checkpoint", str(run)))
    # refused: no setting, an existing --out, a bad value; nothing written
    for args, msg in ((["--note", "x", "--force"], "give at least one setting"),
                      (["--temperature", "1", "--note", "x"], "exists; pass --force"),
                      (["--refine-fraction", "2", "--note", "x", "--force"], "--refine-fraction must be in")):
        assert main(["set-sampling", "--checkpoint", str(run), "--out", str(tuned), *args]) == 2
        assert msg in capsys.readouterr().err
    assert checkpoint.sampling_settings(checkpoint.load(tuned))["temperature"] == 0
    # --weights-only: what a shipped file carries; the weights and records stay
    slim = tmp_path / "slim.pt"
    assert main(["set-sampling", "--checkpoint", str(run), "--out", str(slim), "--temperature",
                 "0.5", "--note", "x", "--weights-only"]) == 0
    full, shipped = checkpoint.load(tuned), checkpoint.load(slim)
    assert full.optimizer is not None and full.rng is not None
    assert shipped.optimizer is None and shipped.rng is None and shipped.discriminator is None
    assert all(torch.equal(v, shipped.denoiser[k]) for k, v in full.denoiser.items())
    assert shipped.history == full.history and slim.stat().st_size < tuned.stat().st_size


def test_firing_penalty_lowers_firing_and_resumes_exactly(tiny_mnist, tmp_path):
    kw = dict(epochs_vq=1, epochs_denoiser=3, lr=1e-2)
    plain = train(tiny_cfg(**kw), "mnist", tiny_mnist, tmp_path / "plain", progress=False)
    sparse = train(tiny_cfg(firing_penalty=5.0, **kw), "mnist", tiny_mnist, tmp_path / "sparse",
                   progress=False)
    # the rates the training batches fired at in the last epoch (train-mode batch norm)
    rate = {p: checkpoint.load(p).history["denoiser"][-1]["firing_rate"] for p in (plain, sparse)}
    assert rate[sparse] < 0.7 * rate[plain]
    state = checkpoint.load(sparse)
    assert state.config["train"]["firing_penalty"] == 5.0
    last = state.history["denoiser"][-1]
    assert {"firing_penalty", "firing_rate", "firing_rate_0", "diffusion_loss"} <= set(last)
    assert last["loss"] == pytest.approx(last["diffusion_loss"] + last["firing_penalty"], rel=0.2)
    # stopped after one epoch and resumed: the same weights as the uninterrupted run
    half = tmp_path / "half"
    train(tiny_cfg(firing_penalty=5.0, **dict(kw, epochs_denoiser=1)), "mnist", tiny_mnist, half,
          progress=False)
    assert main(["train", "--data-root", str(tiny_mnist), "--out", str(half), "--resume",
                 "--epochs-denoiser", "3", "--no-progress"]) == 0
    a, b = state.denoiser, checkpoint.load(half / "checkpoint.pt").denoiser
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a target rate above what the layers fire leaves nothing to penalise
    free = train(tiny_cfg(firing_penalty=5.0, firing_target=(1.0,), **kw), "mnist", tiny_mnist,
                 tmp_path / "free", progress=False)
    assert checkpoint.load(free).history["denoiser"][-1]["firing_penalty"] == 0


@pytest.mark.parametrize("flags, words", [
    (["--firing-penalty", "-1"], "--firing-penalty must be a number >= 0"),
    (["--firing-penalty", "1", "--firing-target", "1.5"], "must lie in [0, 1]"),
    (["--firing-penalty", "1", "--firing-target", "0.1,0.1,0.1"], "one rate, or one per layer"),
    (["--firing-target", "abc"], "expected rates like"),
])
def test_firing_penalty_bad_input(tiny_mnist, tmp_path, capsys, flags, words):
    out = tmp_path / "r"
    try:
        code = main(["train", "--dataset", "mnist", "--data-root", str(tiny_mnist), "--out",
                     str(out), "--preset", "tiny", "--no-progress", *flags])
    except SystemExit as e:  # argparse's own check of the flag's form
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not out.exists()


def test_checkpoint_record_is_versioned_and_reads_older_files(tiny_mnist, tmp_path, capsys):
    """A file is a Checkpoint record with a schema version: unversioned files
    (schema 1, every file written before the field existed, the shipped ones
    included) load as the current record; a newer schema or a field this
    version does not know is refused with one line, not misread."""
    run = train(tiny_cfg(epochs_vq=1, epochs_denoiser=1), "mnist", tiny_mnist, tmp_path / "a",
                progress=False)
    raw = torch.load(run, weights_only=True)
    assert raw["schema"] == checkpoint.SCHEMA and raw["format"] == checkpoint.FORMAT
    old = {k: v for k, v in raw.items() if k != "schema"}
    torch.save(old, tmp_path / "old.pt")
    ck = checkpoint.load(tmp_path / "old.pt")
    assert isinstance(ck, checkpoint.Checkpoint) and ck.schema == checkpoint.SCHEMA
    assert all(torch.equal(v, ck.denoiser[k]) for k, v in raw["denoiser"].items())
    assert checkpoint.load(None).schema == checkpoint.SCHEMA  # the shipped file, unversioned
    for name, bad, msg in (("newer", {**raw, "schema": checkpoint.SCHEMA + 1}, "newer spikediff"),
                           ("unknown", {**raw, "colour": "blue"}, "does not know: colour"),
                           ("partial", {k: v for k, v in raw.items() if k != "data"}, "lacks data")):
        torch.save(bad, tmp_path / f"{name}.pt")
        assert main(["info", "--checkpoint", str(tmp_path / f"{name}.pt")]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
