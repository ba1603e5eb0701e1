"""What every command line shares: help without loading torch, progress bars
only on a terminal."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "spikediff" / "weights" / "mnist-base.pt"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.mark.parametrize("module, argv", [
    ("spikediff.cli", ["--help"]), ("spikediff.cli", ["train", "--help"]),
    ("spikediff.cli", ["eval", "--help"]), ("spikediff.cli", ["sample", "--help"]),
    ("export.cli", ["--help"]), ("hardware.run", ["--help"]),
    ("hardware.energy.cli", ["report", "--help"]),
])
def test_help_does_not_import_torch(module, argv):
    """--help parses before anything heavy is imported (torch takes seconds to
    load on a busy machine); the help text is printed all the same."""
    code = (f"import sys\nfrom {module} import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and out.stdout.strip().endswith("NO-TORCH")


def _sample_stderr(tmp_path, on_terminal: bool) -> str:
    """stderr of `spikediff sample` on a pipe, or on a pseudo-terminal."""
    cmd = [sys.executable, "-m", "spikediff", "sample", "--checkpoint", str(BASE), "--n", "2",
           "--steps", "3", "--out", str(tmp_path / f"{on_terminal}.png")]
    if not on_terminal:
        return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path,
                              timeout=300, check=True).stderr
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=follower, env=_env(),
                            cwd=tmp_path)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_on_a_terminal(tmp_path):
    """A log (stderr on a pipe) gets no progress bar and no carriage returns; a
    terminal gets the bar, so the switch is the terminal and not a bar that never shows."""
    logged = _sample_stderr(tmp_path, on_terminal=False)
    assert "\r" not in logged and "sampling" not in logged
    shown = _sample_stderr(tmp_path, on_terminal=True)
    assert "sampling" in shown and "\r" in shown


def _actions(parser):
    """Every option of a parser and of its subcommands, with the command's name."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield parser.prog, action


def test_every_numeric_option_is_checked_against_its_meaning():
    """No option of the four commands takes a bare int or float: each goes
    through a cliutil type (count, nonneg, fraction, seed, ...) that refuses a
    value outside its meaning, and each parser is cliutil's (one error: line)."""
    from export.cli import build_parser as export_parser
    from hardware.energy.cli import build_parser as energy_parser
    from hardware.run import build_parser as run_parser
    from spikediff.cli import build_parser as spikediff_parser
    from spikediff.cliutil import ArgumentParser
    bare = []
    for build in (spikediff_parser, export_parser, run_parser, energy_parser):
        parser = build()
        assert isinstance(parser, ArgumentParser), parser.prog
        for prog, action in _actions(parser):
            if action.type in (int, float):
                bare.append(f"{prog} {action.option_strings[0]}")
            if action.default is not None and callable(action.type) and isinstance(
                    action.default, (int, float)) and not isinstance(action.default, bool):
                action.type(str(action.default))  # the default passes its own check
    assert not bare, f"options without a cliutil type: {bare}"


def test_dataset_picks_that_data_sets_shipped_checkpoint(tmp_path, monkeypatch, capsys):
    """--dataset NAME alone means spikediff/weights/NAME.pt in every tool; a
    missing one, or a --checkpoint trained on another data set, is one error."""
    import dataclasses

    from export.cli import main as export_main
    from hardware.run import main as run_main
    from spikediff import checkpoint
    from spikediff.cli import main
    weights = tmp_path / "weights"
    weights.mkdir()
    ck = checkpoint.load(BASE)
    checkpoint.atomic_save(dataclasses.replace(ck, data={**ck.data, "name": "kmnist"}),
                           weights / "kmnist.pt")
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", weights)
    assert export_main(["--dataset", "kmnist", "--part", "denoiser",
                        "--out", str(tmp_path / "k.nir")]) == 0
    assert f"checkpoint: {weights / 'kmnist.pt'}" in capsys.readouterr().out
    assert main(["sample", "--dataset", "kmnist", "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(tmp_path / "k.png")]) == 0
    assert (tmp_path / "k.png").is_file()
    for tool, argv in [(main, ["sample", "--out", str(tmp_path / "c.png")]),
                       (export_main, ["--out", str(tmp_path / "c.nir")]),
                       (run_main, ["--backend", "norse", "--n", "1"])]:
        assert tool([*argv, "--dataset", "cifar10"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: no checkpoint is shipped for cifar10 (shipped: kmnist)"), err
        assert tool([*argv, "--dataset", "mnist", "--checkpoint", str(weights / "kmnist.pt")]) == 2
        assert "was trained on kmnist, not mnist" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "c.nir").exists()
