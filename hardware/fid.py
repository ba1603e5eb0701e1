"""`python -m hardware.fid`: `spikediff eval` with the samples drawn on the Lava
fixed_pt emulator (hardware/emulator.py: Lava's fixed-point arithmetic bit for
bit, on the checkpoint's NIR export), so FID at N = 5,000 of what the chip
computes takes minutes, not days.

    python -m hardware.fid --checkpoint QAT_CKPT --n 5000 --json fxp.json
    python -m hardware.fid --checkpoint CKPT --lava-weights split --n 5000

--lava-scales frozen (default) fixes the fixed-point scales once, from a float
generation of the first sampling batch (hardware/calibration.py); per-call
re-calibrates at every call. Every flag but --lava-weights/--lava-scales is
spikediff eval's (same reference features,
caches, temperature selection); the samples are cached apart from the float
model's. The VQ-SVAE reconstruction line stays the float model's.
"""
from __future__ import annotations

import sys

from spikediff.cliutil import ArgumentParser, handle_errors


@handle_errors
def main(argv=None) -> int:
    from spikediff.cli import build_parser, cmd_eval

    from .backends import emulated
    argv = list(sys.argv[1:] if argv is None else argv)
    own = ArgumentParser(prog="python -m hardware.fid", add_help=False)
    own.add_argument("--lava-weights", choices=["single", "split"], default="single")
    own.add_argument("--lava-scales", choices=["frozen", "per-call"], default="frozen")
    mine, rest = own.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    a = build_parser().parse_args(["eval", *rest])
    return cmd_eval(a, sampler=lambda model: emulated(model, mine.lava_weights, mine.lava_scales))


if __name__ == "__main__":
    sys.exit(main())
