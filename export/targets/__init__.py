"""Consumer profiles: the same exported network in the form one NIR consumer reads correctly.

`spikediff-export --to nir --target NAME` passes the graph through NAME's
`adapt(graph) -> graph` before writing. A profile may change how the network is
*said* (dt convention, which nir version's fields, scalar instead of per-neuron
parameters) but never the network: where a consumer's own neuron semantics differ
(update order, reset rule), its module says so in DIFFERENCES and
`benchmarks/nir_consumers.py` measures the agreement instead of assuming it.

Each profile is one small module here with NAME, DESCRIPTION (one line for --help),
DIFFERENCES (measured, for docs/nir.md), READS_READOUTS (its import maps LI/I: else
the export writes the spiking form), READS_NESTED (it takes a file of three part
subgraphs: else one --part per file), adapt() and write(graph, path); a profile
without its own write() uses the generic one. The runners that prove them are
benchmarks/nir_consumers/NAME.py.
"""
from __future__ import annotations

import importlib

NAMES = ("generic", "snntorch", "norse", "sinabs", "spyx")


def profile(name: str):
    """The profile module of `name` (export/targets/NAME.py)."""
    if name not in NAMES:
        from spikediff.errors import SpikediffError
        raise SpikediffError(f"unknown --target {name!r}; choose one of: {', '.join(NAMES)}")
    mod = importlib.import_module(f"{__name__}.{name}")
    if not hasattr(mod, "write"):
        from . import generic
        mod.write = generic.write
    return mod
