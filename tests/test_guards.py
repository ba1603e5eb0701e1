"""Issue 28's guards: no traceback, no silent wrong result, no lost file.

Run folders are locked while a run writes there; a killed write's temporary
files are cleared; --resume checks the data; checkpoints are checked on load;
folder data sets are checked before anything is written."""
import json
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import write_idx_images
from spikediff import checkpoint, train as train_mod
from spikediff.checkpoint import CheckpointError
from spikediff.cli import main
from spikediff.config import load_config
from spikediff.data import DatasetError, load_images
from spikediff.errors import SpikediffError
from spikediff.train import LOCK_NAME, train


def tiny_cfg(**train):
    cfg = load_config("tiny")
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(scope="module")
def vq_run(tiny_mnist, tmp_path_factory):
    """A run stopped after its VQ stage (1 epoch): a checkpoint to resume."""
    run = tmp_path_factory.mktemp("vq_run") / "run"
    train(tiny_cfg(), "mnist", tiny_mnist, run, stages=("vq",), progress=False)
    return run


def copy_run(vq_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(vq_run, run)
    return run


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(run, pid):
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_a_second_run_into_a_folder_in_use_is_refused(vq_run, tiny_mnist, tmp_path, capsys):
    run = copy_run(vq_run, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(run, other.pid)
        for args in (["--resume"], ["--dataset", "mnist", "--preset", "tiny"]):
            assert main(["train", "--data-root", str(tiny_mnist), "--out", str(run),
                         "--no-progress", *args]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err
            assert "in use by another training run" in err and f"process {other.pid}" in err
        # the first run's files are as they were, its lock included
        assert (run / "checkpoint.pt").read_bytes() == before
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == other.pid
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_stray_temporary_files_go(vq_run, tiny_mnist, tmp_path,
                                                                  capsys):
    run = copy_run(vq_run, tmp_path)
    pid = dead_pid()
    write_lock(run, pid)
    stray = run / ".checkpoint.pt.ab12cd_9.pt"  # what a write killed before its rename leaves
    stray.write_bytes(b"half a checkpoint")
    kept = [run / "notes.txt", run / ".notes.txt", run / ".checkpoint.pt.short.pt"]
    for f in kept:
        f.write_text("mine")
    train(None, None, tiny_mnist, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"note: taking over {run / LOCK_NAME} left by process {pid}, which is no longer " \
           "running" in err
    assert "note: removed 1 temporary file a killed write left in" in err and stray.name in err
    assert not stray.exists() and all(f.read_text() == "mine" for f in kept)
    assert checkpoint.load(run / "checkpoint.pt").stage == "done"
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_the_lock_is_released_on_error_and_interrupt(vq_run, tiny_mnist, tmp_path, monkeypatch):
    run = copy_run(vq_run, tmp_path)
    with pytest.raises(SpikediffError, match="exists: pass --resume"):
        train(tiny_cfg(), "mnist", tiny_mnist, run, progress=False)
    assert not (run / LOCK_NAME).exists()

    def interrupted(self, stages):
        assert (self.out_dir / LOCK_NAME).exists()  # held while the run trains
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod.Trainer, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(None, None, tiny_mnist, run, resume=True, progress=False)
    assert not (run / LOCK_NAME).exists()
    fresh = tmp_path / "fresh"  # a new folder: made, locked and released
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(), "mnist", tiny_mnist, fresh, progress=False)
    assert fresh.is_dir() and not (fresh / LOCK_NAME).exists()


def test_resume_refuses_changed_data(tiny_mnist, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_mnist, data)
    run = tmp_path / "run"
    train(tiny_cfg(), "mnist", data, run, stages=("vq",), progress=False)
    recorded = checkpoint.load(run / "checkpoint.pt").data
    assert len(recorded["source_sha256"]) == 64 and len(recorded["source_files_sha256"]) == 2
    before = (run / "checkpoint.pt").read_bytes()
    # the same images elsewhere: the same data
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    imgs = load_images("mnist", data).images[:, 0].numpy()
    write_idx_images(data / "mnist" / "train-images-idx3-ubyte.gz", 255 - imgs)
    assert main(["train", "--data-root", str(data), "--out", str(run), "--resume",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ("the training data differs from this run's: train-images-idx3-ubyte.gz changed "
            "(sha256 ") in err and "--allow-data-change" in err and "start a new run" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    # on the original data (here a copy in another place) it continues
    train(None, None, moved, run, stages=("vq",), resume=True, progress=False)
    assert "warning" not in capsys.readouterr().err
    # asked for, a change is accepted, said and recorded
    train(None, None, data, run, resume=True, progress=False, allow_data_change=True)
    assert "warning: continuing on changed training data (train-images-idx3-ubyte.gz changed" \
        in capsys.readouterr().err
    after = checkpoint.load(run / "checkpoint.pt").data
    assert after["changes"][0]["was"] == recorded["source_sha256"]
    assert after["source_sha256"] != recorded["source_sha256"]


def test_resume_refuses_flags_that_would_change_the_run(vq_run, tiny_mnist, tmp_path, capsys):
    """Repeating the first command with --resume works; a flag that changes what the
    run is (data set, preset, size, a config value, the run it was built on) is one
    error line, not silently ignored, and the checkpoint is untouched."""
    run = copy_run(vq_run, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    same = tmp_path / "same.toml"
    same.write_text("[train]\nbatch_size = %d\n" % load_config("tiny").train.batch_size)
    other = tmp_path / "other.toml"
    other.write_text("[train]\nlr = 0.5\n")
    base = ["train", "--data-root", str(tiny_mnist), "--out", str(run), "--resume", "--no-progress"]
    for args, words in ((["--dataset", "kmnist"], "--dataset kmnist cannot change when resuming: "
                         "this run has mnist"),
                        (["--preset", "paper"], "--preset paper cannot change when resuming: "
                         "this run has tiny"),
                        (["--limit", "5"], "--limit 5 cannot change when resuming"),
                        (["--image-size", "14"], "--image-size 14 cannot change when resuming"),
                        (["--config", str(other)], "sets train.lr = 0.5, but this run has"),
                        (["--finetune", str(run / "checkpoint.pt")], "this run was not built on")):
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and words in err, (args, err)
        assert (run / "checkpoint.pt").read_bytes() == before
    # the run's own settings, repeated: accepted, and the run goes on
    train(None, "mnist", tiny_mnist, run, resume=True, progress=False,
          resume_flags={"dataset": "mnist", "preset": "tiny", "config": str(same),
                        "grayscale": True})
    assert checkpoint.load(run / "checkpoint.pt").stage == "done"


def test_resume_of_a_checkpoint_without_data_hashes_warns(vq_run, tiny_mnist, tmp_path, capsys):
    run = copy_run(vq_run, tmp_path)
    old = checkpoint.load(run / "checkpoint.pt")
    del old.data["source_sha256"], old.data["source_files_sha256"]
    checkpoint.atomic_save(old, run / "checkpoint.pt")
    train(None, None, tiny_mnist, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "warning: this checkpoint records no hash of its training data" in err
    assert "could not be checked" in err
    assert "source_sha256" in checkpoint.load(run / "checkpoint.pt").data  # recorded now


def test_empty_and_truncated_checkpoints_are_one_line(vq_run, tmp_path, capsys):
    good = (vq_run / "checkpoint.pt").read_bytes()
    for name, content, words in (("empty.pt", b"", "is empty (0 bytes)"),
                                 ("half.pt", good[:len(good) // 2], "truncated or corrupt")):
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"{name}.png"
        assert main(["sample", "--checkpoint", str(tmp_path / name), "--out", str(out),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists()


@pytest.fixture(scope="module")
def done_run(tiny_mnist, tmp_path_factory):
    run = tmp_path_factory.mktemp("done_run") / "run"
    train(tiny_cfg(ema_decay=0.9), "mnist", tiny_mnist, run, progress=False)
    return run / "checkpoint.pt"


@pytest.mark.parametrize("field", ["vq", "denoiser", "denoiser_ema"])
def test_non_finite_weights_are_refused(done_run, tmp_path, capsys, field):
    ck = checkpoint.load(done_run)
    weights = getattr(ck, field)
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[key] = weights[key].clone()
    weights[key].view(-1)[1] = float("nan")
    bad = tmp_path / "nan.pt"
    checkpoint.atomic_save(ck, bad)
    with pytest.raises(CheckpointError, match=rf"non-finite weights \(NaN in {field}\.{key}\)"):
        checkpoint.load(bad)
    out = tmp_path / "black.png"
    assert main(["sample", "--checkpoint", str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{field}.{key}" in err and err.count("\n") == 1 and not out.exists()


def test_a_config_that_disagrees_with_the_weights_is_one_line(done_run, tmp_path, capsys):
    ck = checkpoint.load(done_run)
    ck.config["denoiser"]["channels"] = [8, 12]  # edited by hand
    bad = tmp_path / "edited.pt"
    checkpoint.atomic_save(ck, bad)
    with pytest.raises(CheckpointError) as e:
        checkpoint.model_from(checkpoint.load(bad))
    msg = str(e.value)
    assert "denoiser_ema." in msg and "has shape (" in msg and "config builds (" in msg
    assert "\n" not in msg
    out = tmp_path / "x.png"
    assert main(["sample", "--checkpoint", str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config builds" in err and err.count("\n") == 1 and "Traceback" not in err


def write_image(path, size, mode, value=128):
    from PIL import Image
    Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def test_folder_of_mixed_sizes_and_modes_is_converted_with_a_note(tmp_path, capsys):
    write_image(tmp_path / "a.png", (20, 30), "L")
    write_image(tmp_path / "b.png", (40, 40), "RGB")
    write_image(tmp_path / "c.jpg", (20, 30), "RGB")
    x = load_images("folder", folder=tmp_path, image_size=16).images
    assert x.shape == (3, 1, 16, 16)
    err = capsys.readouterr().err
    assert err.startswith("note: the 3 images have 2 sizes and 2 modes") and err.count("\n") == 1
    assert "resized to 16x16" in err


def test_folder_decompression_bombs_are_refused(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for size in ((12, 12), (20, 20)):  # PIL warns beyond 100 pixels, raises beyond 200
        d = tmp_path / f"{size[0]}"
        d.mkdir()
        write_image(d / "big.png", size, "L")
        with pytest.raises(DatasetError, match=r"refused as a possible decompression bomb") as e:
            load_images("folder", folder=d, image_size=8)
        assert "\n" not in str(e.value) and str(d / "big.png") in str(e.value)


def test_fewer_images_than_a_batch_are_refused_before_the_folder_is_made(tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(5):
        write_image(data / f"{i}.png", (28, 28), "L", 40 * i)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--folder", str(data), "--out", str(run),
                 "--preset", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "5 training images is fewer than one vq batch (16): add images to the data set, or " \
           "pass a smaller --batch-size" in err and err.count("\n") == 1
    assert not run.exists()
