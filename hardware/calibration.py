"""Frozen fixed-point scales: one calibration per graph, measured once.

A chip holds fixed weights, exponents and thresholds; it cannot re-derive its
scales from each input as per-call calibration does (a float run of every
call's inputs; which also makes the integer network depend on the batch). A
calibration fixes them: per subgraph the largest float currents
{population: [max |a_in|, max |v|]} and input ranges over a calibration set
(quantise.check_calibration's form), from which the Lava worker and the
emulator build the same integer net for every call (quantise.fixed_params,
HEADROOM below the int16 range). Currents a later input drives beyond it are
counted (emulator: a_in beyond int16, v clipped to 24 bits; both: inputs
saturated to 16 bits), not silently wrong.

The default calibration set is a float generation: every denoiser call and
the decoder call of n images, run as the plan's float network (what per-call
calibration runs at each call, emulator.FloatRun; hardware.backends.measure),
so the tokens are the float model's. A calibration is stored as JSON (``--calibration
FILE``, ``--save-calibration FILE``) beside, not inside, the NIR file: it
depends on the calibration set as well as on the graph, and one export can be
calibrated more than one way without rewriting the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spikediff.errors import SpikediffError

FORMAT = "spikediff-calibration/1"
SCALES = ("frozen", "per-call")


def document(subgraphs: dict, source: str) -> dict:
    return {"format": FORMAT, "calibration_set": source, "subgraphs": subgraphs}


def read(path) -> dict:
    """A calibration file: its subgraphs {name: calibration}; one-line errors."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpikediffError(f"no calibration file at {path}") from None
    except (OSError, ValueError) as e:
        raise SpikediffError(f"cannot read calibration file {path} ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(
            d.get("subgraphs"), dict):
        raise SpikediffError(f"{path} is not a calibration file (format {FORMAT!r} with "
                             "'subgraphs')")
    return d


def write(doc: dict, path) -> None:
    from spikediff.atomic import atomic_path
    with atomic_path(str(path)) as p:
        Path(p).write_text(json.dumps(doc, indent=1))


def first_call(plan, inputs: dict) -> dict:
    """The calibration of one call's inputs alone (the fallback for a subgraph
    no calibration covers, e.g. the encoder)."""
    from hardware.lava.worker.quantise import calibration_of
    return calibration_of(plan, {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()})
