"""What every command line shares: spikediff, spikediff-export, spikediff-run,
spikediff-energy and the benchmarks.

Error handling (`handle_errors`), the device choice, the flags several commands
take (--refine-*, --weights, --random-weights) and the one check that an output
may be written (`check_outputs`). Nothing heavy at import: torch is imported
inside the functions that need it, so that `--help` stays fast.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
from pathlib import Path

from .errors import SpikediffError


def passive_openmp() -> None:
    """Ask OpenMP to wait passively unless the caller chose otherwise.

    libgomp's default busy-waiting makes a 2-thread torch op 50x slower whenever
    another process holds a core (seen on 2-core machines: 0.3 ms -> 24 ms per
    small conv); passive waiting costs little when the machine is idle. libgomp
    reads the variable once, when torch loads it, so this has to run at the
    start of the process, before `import torch`: every command's `main` does it
    (through `handle_errors`; the commands import torch only after parsing) and
    scripts/setup.sh exports it for everything else (tests, benchmarks that
    import torch first). Importing spikediff changes no environment variable."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def handle_errors(main):
    """The wrapper of every command's `main`: user errors become one clear line
    and exit code 2, not a traceback; OpenMP waits passively (passive_openmp)."""
    @functools.wraps(main)
    def wrapper(argv=None):
        passive_openmp()
        try:
            return main(argv) or 0
        except SpikediffError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
            # Python would flush stdout again at exit and fail the same way: point it at devnull.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return wrapper


class UsageError(SpikediffError):
    """A command line argparse refuses (unknown flag, bad value); exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command: a refused command line is one `error: ...`
    line on stderr and exit code 2 (through `handle_errors`), not argparse's
    usage block; --help is unchanged. Subcommand parsers inherit it."""

    def error(self, message):
        # a refused value reads as the project's other checks: "--n must be ..."
        message = re.sub(r"^argument (\S+?)(/\S+)?: must ", r"\1 must ", message)
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# --- Numeric options: every one goes through one of these `type=` callables, so that
# a value outside its meaning is refused while parsing, before any work. ---

def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def at_least(low: int, meaning: str = ""):
    """`type=`: an integer >= low (`meaning` of the limit, for the message)."""
    what = f"an integer >= {low}" + (f" ({meaning})" if meaning else "")

    def parse(text: str) -> int:
        v = _int(text, what)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = f"integer >= {low}"
    return parse


count = at_least(1)
"""`type=`: a count, an integer >= 1 (images, steps, epochs, batch size)."""

count0 = at_least(0)
"""`type=`: an integer >= 0 where 0 has a documented meaning (none, off)."""


def positive(text: str) -> float:
    """`type=`: a finite number > 0 (a time, a size)."""
    v = _float(text, "a number > 0")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return v


def nonneg(text: str) -> float:
    """`type=`: a finite number >= 0 (a weight; a temperature, where 0 means argmax)."""
    v = _float(text, "a number >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return v


def fraction(text: str) -> float:
    """`type=`: a fraction in (0, 1] (0 would do nothing)."""
    v = _float(text, "a fraction in (0, 1]")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return v


SEED_LIMIT = 2 ** 63


def seed(text: str) -> int:
    """`type=`: a random seed, 0 <= seed < 2**63 (within torch.Generator.manual_seed's
    range, with room for the seeds derived from it)."""
    what = "an integer in [0, 2**63)"
    v = _int(text, what)
    if not 0 <= v < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def temperatures(text: str) -> list[float]:
    """`type=`: comma-separated temperatures, each >= 0 (0: argmax)."""
    try:
        return [nonneg(t.strip()) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be comma-separated temperatures >= 0 like "
                                         f"0.8,0.9,1.0, got {text!r}") from None


def rates(text: str) -> tuple[float, ...]:
    """`type=`: one rate or comma-separated rates, each in [0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 0.05 or 0.05,0.1,0.1,0.05, "
                                         f"got {text!r}") from None
    if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text!r}")
    return values


def pick_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpikediffError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; "
                             "use --device cpu")
    return name


def check_outputs(paths, force: bool, *, folders: bool = False) -> None:
    """Before any work: each output path (None: not asked for) may be written.
    An existing one only with --force; not a folder unless the outputs are
    folders (`folders`); where it goes must be a writable folder (or one
    creatable inside a writable one)."""
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir() and not folders:
            raise SpikediffError(f"{p} is a folder, not a file")
        if p.exists() and not force:
            raise SpikediffError(f"{p} exists; pass --force to overwrite it")
        probe = p.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise SpikediffError(f"cannot write {p}: {probe} is not a writable folder")


def add_refine_args(p: argparse.ArgumentParser) -> None:
    """--refine-*: the optional corrector after sampling (config.Refinement)."""
    p.add_argument("--refine-steps", type=count0, metavar="K",
                   help="after sampling, K steps that each re-mask and redraw a random fraction "
                   "of the tokens (default: the config's, 0 = off as published; each costs one "
                   "denoiser pass)")
    p.add_argument("--refine-fraction", type=fraction, metavar="R",
                   help="fraction of tokens each refinement step redraws (default: the "
                   "config's, 0.2)")
    p.add_argument("--refine-temperature", type=nonneg, metavar="T",
                   help="temperature of the refinement draws (default: the config's, 0.5)")


def refine_overrides(a) -> dict:
    """The --refine-* settings given on the command line, by Refinement field."""
    from dataclasses import fields

    from .config import Refinement
    given = {f.name: getattr(a, f"refine_{f.name}") for f in fields(Refinement)}
    return {k: v for k, v in given.items() if v is not None}


def refine_settings(a, base):
    """The config.Refinement to use: the command line's settings where given,
    else those of `base` (a config's or an export's); checked."""
    from dataclasses import replace

    from .config import check_refine
    r = replace(base, **refine_overrides(a))
    check_refine(r)
    return r


def refine_from_args(a, ckpt_path):
    """The command line's --refine-* over the checkpoint config's; None: none given."""
    from . import checkpoint
    from .config import Config
    if not refine_overrides(a):
        return None
    cfg = Config.from_dict(checkpoint.load(ckpt_path).config)
    return refine_settings(a, cfg.diffusion.refinement())


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    """--weights: which denoiser of a run that kept a weight average to load."""
    from .config import WEIGHTS
    p.add_argument("--weights", choices=WEIGHTS, default="ema",
                   help="denoiser weights of a run that kept an average (train.ema_decay): the "
                   "average (default) or the last step's")


def add_random_weights_arg(p: argparse.ArgumentParser) -> None:
    """--random-weights PRESET: the same untrained stand-in in every command."""
    from .config import PRESETS
    p.add_argument("--random-weights", metavar="PRESET", choices=list(PRESETS),
                   help="no checkpoint: a model of this preset (1x28x28) with random, untrained "
                   "weights drawn from --seed, batch-norm statistics from one random batch so "
                   "that every layer fires; for tests and timing, its spikes say nothing "
                   "about a trained model")


def random_weights_model(a):
    """The model --random-weights names (spikediff.model.active_random_model,
    inference form); an error if --checkpoint is given too."""
    from .model import active_random_model
    if a.checkpoint:
        raise SpikediffError("give either --checkpoint or --random-weights, not both")
    return active_random_model(a.random_weights, a.seed).inference()


def add_checkpoint_args(p: argparse.ArgumentParser, dataset_help: str = "") -> None:
    """--checkpoint and --dataset as every tool reads them (checkpoint.pick):
    --dataset alone picks that data set's shipped checkpoint."""
    from .data import DATASETS
    p.add_argument("--checkpoint", help="a .pt file from `spikediff train` (default: the "
                   "shipped checkpoint of --dataset, spikediff/weights/DATASET.pt)")
    p.add_argument("--dataset", choices=DATASETS, help="the data set whose shipped checkpoint "
                   "to use when no --checkpoint is given (default: mnist); with --checkpoint, "
                   "the data set it must have been trained on" + dataset_help)


def pick_checkpoint(a) -> None:
    """a.checkpoint set to what --checkpoint and --dataset name (checkpoint.pick);
    a.dataset stays None when not given (the tool reads the checkpoint's own);
    with --random-weights nothing is picked."""
    from . import checkpoint
    if getattr(a, "random_weights", None):
        return
    a.checkpoint = str(checkpoint.pick(a.checkpoint, a.dataset))
