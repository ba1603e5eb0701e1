"""Energy per operation (SPEC section 6), overridable from a TOML/JSON file or flags.

A constants file is a flat table of the field names below, e.g.

    # my-chip.toml
    ac_pj = 0.03
    mac_pj = 0.2

or the same as a JSON object. Unknown names and non-numeric values are errors.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from spikediff.errors import SpikediffError


class ConstantsError(SpikediffError):
    pass


@dataclass(frozen=True)
class EnergyConstants:
    # 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014)
    ac_pj: float = 0.9                      # accumulate (fp32 add)
    mac_pj: float = 4.6                     # multiply-accumulate (3.7 mult + 0.9 add)
    # Charged per LIF neuron update and step in the 45 nm model: the LIF-box
    # update v + (x - v) / 2 is a subtract, a shift and an add, and the spike is
    # a compare with the threshold: 4 fp32 operations at an add's 0.9 pJ (the
    # shift charged as an add, an upper bound).
    neuron_update_45nm_pj: float = 3.6
    # Loihi (Davies et al., IEEE Micro 2018)
    loihi_synop_pj: float = 23.6            # per synaptic spike operation (minimum)
    loihi_neuron_inactive_pj: float = 52.0  # neuron update without a spike
    loihi_neuron_active_pj: float = 81.0    # neuron update with a spike
    # Loihi has no multipliers for analog inputs: analog-fed layers are charged
    # as MACs on a 45 nm host at this energy each.
    loihi_mac_pj: float = 4.6

    SOURCES = {
        "ac_pj": "Horowitz, ISSCC 2014 (45 nm, fp32 add)",
        "mac_pj": "Horowitz, ISSCC 2014 (45 nm, fp32 mult 3.7 + add 0.9)",
        "neuron_update_45nm_pj": "Horowitz, ISSCC 2014: 4 fp32 ops x 0.9 pJ (subtract, shift, "
                                 "add of v + (x - v)/2, threshold compare)",
        "loihi_synop_pj": "Davies et al., IEEE Micro 2018 (minimum per synaptic spike op)",
        "loihi_neuron_inactive_pj": "Davies et al., IEEE Micro 2018",
        "loihi_neuron_active_pj": "Davies et al., IEEE Micro 2018",
        "loihi_mac_pj": "analog-fed layers run as MACs on a 45 nm host (our choice)",
    }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **values) -> "EnergyConstants":
        return dataclasses.replace(self, **_validated(values, "override"))


def _validated(values: dict, where: str) -> dict:
    known = {f.name for f in dataclasses.fields(EnergyConstants)}
    out = {}
    for k, v in values.items():
        if k not in known:
            raise ConstantsError(f"unknown energy constant '{k}' in {where}; known: "
                                 f"{', '.join(sorted(known))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v) if isinstance(v, str) else None
            except ValueError:
                v = None
            if v is None:
                raise ConstantsError(f"energy constant '{k}' in {where} must be a number (pJ)")
        v = float(v)
        if not math.isfinite(v) or v < 0:
            raise ConstantsError(f"energy constant '{k}' in {where} must be a finite number >= 0")
        out[k] = v
    return out


def load_constants(path: str | Path | None = None, overrides: dict | list | None = None
                   ) -> EnergyConstants:
    """Defaults, then a TOML/JSON file, then overrides ({name: value} or ["name=value"])."""
    c = EnergyConstants()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConstantsError(f"constants file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConstantsError(f"cannot read constants file {path}: {e}") from None
        try:
            values = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
            raise ConstantsError(f"constants file {path} is not valid {kind}: {e}") from None
        if not isinstance(values, dict):
            raise ConstantsError(f"constants file {path} must hold a table of name = value")
        c = dataclasses.replace(c, **_validated(values, str(path)))
    if overrides:
        if isinstance(overrides, (list, tuple)):
            d = {}
            for item in overrides:
                if "=" not in item:
                    raise ConstantsError(f"--set {item!r}: expected NAME=VALUE (e.g. ac_pj=0.9)")
                k, v = item.split("=", 1)
                d[k.strip()] = v.strip()
            overrides = d
        c = dataclasses.replace(c, **_validated(overrides, "--set"))
    return c
