"""Every input a user can type (issue 28): a value outside an option's meaning,
an unknown flag, an output that may not be written. Each command is run as the
user runs it (a subprocess) and must answer with exactly one `error:` line on
stderr and exit code 2: no traceback, no silently wrong result, and no file
created, changed or removed. Positive controls check that the same commands with
good values still work, so that validation cannot be too strict unnoticed."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BASE = str(REPO / "spikediff" / "weights" / "mnist-base.pt")

CLIS = {"spikediff": "spikediff", "export": "export", "run": "hardware",
        "energy": "hardware.energy"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _run(cli, argv, cwd):
    return subprocess.run([sys.executable, "-m", CLIS[cli], *argv], capture_output=True,
                          text=True, env=_env(), cwd=cwd, timeout=300)


def _snapshot(root: Path) -> dict:
    """Every path under root: a folder, or a file's content hash."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


def _setup(tmp_path: Path) -> None:
    """What the cases write over or into: an existing file of each kind, a
    folder, a plain file standing where a folder is expected."""
    for name in ("old.png", "old.npz", "old.json", "old.pt", "old.nir", "file"):
        (tmp_path / name).write_bytes(b"keep me: " + name.encode())
    (tmp_path / "folder").mkdir()


def _assert_refused(out, before, tmp_path, words=None):
    err = out.stderr
    assert out.returncode == 2, (out.returncode, err, out.stdout)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    if words:
        assert words in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "the refused command touched files"


S = ["sample", "--checkpoint", BASE, "--n", "1", "--steps", "2", "--no-progress"]
E = ["eval", "--checkpoint", BASE, "--no-progress"]
T = ["train", "--out", "run", "--preset", "tiny", "--no-progress"]
SS = ["set-sampling", "--checkpoint", BASE, "--note", "x"]
RUN = ["--backend", "norse", "--checkpoint", BASE, "--n", "1", "--steps", "2", "--no-progress"]
EN = ["report", "--random-weights", "tiny", "--n", "1", "--steps", "2", "--no-progress"]

# a value outside the option's meaning: refused while parsing
BAD_VALUES = [
    ("spikediff", [*S, "--n", "0"], "--n"),
    ("spikediff", [*S, "--n", "-3"], "--n"),
    ("spikediff", [*S, "--n", "1.5"], "--n"),
    ("spikediff", [*S, "--steps", "0"], "--steps"),  # meant: one per token
    ("spikediff", [*S, "--batch-size", "0"], "--batch-size"),  # was a traceback
    ("spikediff", [*S, "--temperature", "-1"], "--temperature"),  # was: argmax
    ("spikediff", [*S, "--temperature", "nan"], "--temperature"),
    ("spikediff", [*S, "--temperature", "inf"], "--temperature"),
    ("spikediff", [*S, "--seed", "-1"], "--seed"),
    ("spikediff", [*S, "--seed", str(2 ** 63)], "--seed"),
    ("spikediff", [*S, "--seed", "x"], "--seed"),
    ("spikediff", [*S, "--refine-steps", "-1"], "--refine-steps"),
    ("spikediff", [*S, "--refine-fraction", "0"], "--refine-fraction"),
    ("spikediff", [*S, "--refine-fraction", "1.5"], "--refine-fraction"),
    ("spikediff", [*S, "--refine-temperature", "-0.5"], "--refine-temperature"),
    ("spikediff", [*S, "--bogus"], "--bogus"),
    ("spikediff", [*T, "--limit", "0"], "--limit"),  # was: everything
    ("spikediff", [*T, "--epochs-vq", "0"], "--epochs-vq"),
    ("spikediff", [*T, "--epochs-denoiser", "0"], "--epochs-denoiser"),
    ("spikediff", [*T, "--epochs-decoder", "-1"], "--epochs-decoder"),
    ("spikediff", [*T, "--batch-size", "0"], "--batch-size"),
    ("spikediff", [*T, "--firing-penalty", "-1"], "--firing-penalty"),
    ("spikediff", [*T, "--firing-target", "1.5"], "--firing-target"),
    ("spikediff", [*T, "--time-budget", "0"], "--time-budget"),
    ("spikediff", [*T, "--seed", "-1"], "--seed"),
    ("spikediff", [*T, "--image-size", "0"], "--image-size"),
    ("spikediff", ["train", "--preset", "tiny"], "--out"),  # required
    ("spikediff", [*E, "--n", "1"], "--n"),
    ("spikediff", [*E, "--select-n", "0"], "--select-n"),
    ("spikediff", [*E, "--temperatures", "0.8,-1"], "--temperatures"),
    ("spikediff", [*E, "--temperature", "-1"], "--temperature"),
    ("spikediff", [*E, "--steps", "0"], "--steps"),
    ("spikediff", [*E, "--batch-size", "0"], "--batch-size"),
    ("spikediff", [*SS, "--out", "new.pt", "--temperature", "-1"], "--temperature"),
    ("spikediff", [*SS, "--out", "new.pt", "--refine-steps", "x"], "--refine-steps"),
    ("export", ["--n", "0", "--out", "new.nir"], "--n"),
    ("run", [*RUN, "--n", "0"], "--n"),
    ("run", [*RUN, "--steps", "0"], "--steps"),
    ("run", [*RUN, "--temperature", "-1"], "--temperature"),
    ("run", [*RUN, "--seed", "-1"], "--seed"),
    ("energy", [*EN, "--n", "0"], "--n"),
    ("energy", [*EN, "--batch-size", "0"], "--batch-size"),
    ("energy", [*EN, "--steps", "0"], "--steps"),
    ("energy", [*EN, "--temperature", "-1"], "--temperature"),
    ("energy", [*EN, "--refine-fraction", "2"], "--refine-fraction"),
]


@pytest.mark.parametrize("cli, argv, words", BAD_VALUES,
                         ids=[f"{c}-{' '.join(a[-2:])}" for c, a, _ in BAD_VALUES])
def test_bad_value_is_one_error_line(tmp_path, cli, argv, words):
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    _assert_refused(_run(cli, argv, tmp_path), before, tmp_path, words)


# an output that may not be written: refused before any work, the old file intact
BAD_OUTPUTS = [
    ("spikediff", [*S, "--out", "old.png"], "exists"),
    ("spikediff", [*S, "--out", "folder"], "folder"),
    ("spikediff", [*S, "--out", "folder", "--force"], "folder"),
    ("spikediff", [*S, "--out", "file/a.png"], "not a writable folder"),
    ("spikediff", [*S, "--out", "a.png", "--npz", "old.npz"], "exists"),
    ("spikediff", [*S, "--out", "a.png", "--npz", "folder", "--force"], "folder"),
    ("spikediff", [*S, "--out", "a.png", "--npz", "a.png"], "both name"),
    ("spikediff", [*E, "--json", "old.json"], "exists"),
    ("spikediff", [*E, "--json", "folder", "--force"], "folder"),
    ("spikediff", [*E, "--json", "file/r.json"], "not a writable folder"),
    ("spikediff", ["combine", "--denoiser", BASE, "--decoder", BASE, "--out", "old.pt"], "exists"),
    ("spikediff", ["combine", "--denoiser", BASE, "--decoder", BASE, "--out", "folder",
                   "--force"], "folder"),
    ("spikediff", [*SS, "--temperature", "0.9", "--out", "old.pt"], "exists"),
    ("spikediff", [*SS, "--temperature", "0.9", "--out", "file/x.pt"], "not a writable folder"),
    ("spikediff", ["train", "--out", "file", "--preset", "tiny", "--no-progress"],
     "not a writable folder"),
    ("export", ["--out", "old.nir"], "exists"),
    ("export", ["--out", "folder", "--force"], "folder"),
    ("export", ["--to", "onnx", "--out", "file"], "not a writable folder"),
    ("export", ["--verify", "missing.nir"], "no such file"),
    ("export", ["--verify", "old.nir"], "not a readable NIR file"),
    ("export", ["--verify", "old.nir", "--out", "new.nir"], "takes only"),
    ("export", ["--to", "onnx", "--part", "encoder", "--out", "new"], "--to nir only"),
    ("export", ["--target", "nope", "--out", "new.nir"], "unknown --target"),
    ("export", ["--part", "head", "--out", "new.nir"], "--part"),
    ("run", [*RUN, "--out", "old.png"], "exists"),
    ("run", [*RUN, "--json", "folder", "--force"], "folder"),
    ("energy", [*EN, "--json", "old.json"], "exists"),
    ("energy", [*EN, "--plot", "folder", "--force"], "folder"),
    ("energy", [*EN, "--plot", "file/p.png"], "not a writable folder"),
]


@pytest.mark.parametrize("cli, argv, words", BAD_OUTPUTS,
                         ids=[f"{c}-{' '.join(a[-3:])}" for c, a, _ in BAD_OUTPUTS])
def test_unwritable_output_is_one_error_line(tmp_path, cli, argv, words):
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    _assert_refused(_run(cli, argv, tmp_path), before, tmp_path, words)


def test_good_values_still_work(tmp_path):
    """Positive controls: the edges that mean something are accepted (temperature
    0 = argmax, refine-steps 0 = off, seed 2**63 - 1, fraction 1), and --npz keeps
    the user's file name exactly, also over an old file with --force."""
    _setup(tmp_path)
    argv = [*S, "--temperature", "0", "--refine-steps", "0", "--refine-fraction", "1",
            "--seed", str(2 ** 63 - 1), "--batch-size", "1"]
    out = _run("spikediff", [*argv, "--out", "a.png", "--npz", "arrays"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("arrays?*")) and not list(tmp_path.glob(".arrays*"))
    with np.load(tmp_path / "arrays") as z:
        assert z["images"].shape[0] == 1 and z["tokens"].shape[0] == 1
    out = _run("spikediff", [*argv, "--out", "old.png", "--npz", "old.npz", "--force"], tmp_path)
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "old.npz") as z:
        assert z["images"].shape[0] == 1
    assert (tmp_path / "old.png").read_bytes().startswith(b"\x89PNG")


def test_good_values_other_commands(tmp_path):
    out = _run("spikediff", [*SS, "--out", "new.pt", "--temperature", "0",
                             "--refine-steps", "0"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "new.pt").stat().st_size > 0
    out = _run("run", [*RUN, "--temperature", "0", "--seed", "0", "--out", "r.png",
                       "--json", "r.json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.png").exists() and (tmp_path / "r.json").exists()


SCRIPTS = sorted([*(REPO / "benchmarks").glob("*.py"), REPO / "scripts" / "compare_outputs.py"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_scripts_refuse_an_unknown_flag_in_one_line(script, tmp_path):
    """The scripts that produce the docs' numbers parse their command line the same
    way as the four CLIs (cliutil.ArgumentParser through handle_errors)."""
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    out = subprocess.run([sys.executable, str(script), "--no-such-flag", "1"], capture_output=True,
                         text=True, env=_env(), cwd=tmp_path, timeout=120)
    _assert_refused(out, before, tmp_path, words=f"{script.name}: ")
