"""Loihi fixed point: the bit widths, scaling and rounding that every user shares.

Pure numpy/scipy (no torch, no Lava), so the Lava worker (Python 3.10,
hardware.lava.worker), the netx writer (export.netx) and the energy report
(hardware.energy.report) all apply the same rules.

Units, as Lava's bit-accurate models (lava.proc.lif PyLifResetModelBitAcc,
lava.proc.sparse PySparseModelBitAcc) and netx's CUBA blocks use them: a
population with scale S represents the float value 1.0 as S integer units of
its input current a_in.

* a_in: int16 (the LIF's port type), |a_in| <= A_IN_LIMIT.
* u, v: 24-bit; u = decayed u + (a_in << V_SHIFT), so v counts 2**V_SHIFT
  units per a_in unit.
* threshold: 17-bit unsigned mantissa (compared as vth << V_SHIFT).
* bias: 13-bit signed mantissa << 3-bit unsigned exponent, in v units.
* decays du, dv: 12-bit fractions of DECAY_UNIT (1.0 -> 4096).
* weights: 8-bit mantissas with one shared exponent per synapse group
  (Sparse process); mixed-sign weights are even values in [-256, 254] (Lava
  drops the LSB). The Lava mapping writes each link as up to two such groups
  on the same axons, the coarse mantissas and the rounding residual
  (:func:`split_weights`), i.e. two synapses per connection wherever the first
  is not exact.
* graded messages into a Sparse carry GRADED_BITS; analog inputs are
  quantised to INPUT_BITS.

Scales are powers of two (:func:`pow2_floor`), so a dyadic threshold (1.0)
stays exact and the float -> integer map is a shift.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

WEIGHT_BITS = 8
WEIGHT_MAX = 255                   # same-sign 8-bit weight mantissas
WEIGHT_MAX_MIXED = 254             # mixed sign: even values, Lava drops the LSB
A_IN_LIMIT = 2 ** 15 - 1           # |a_in| (int16 port of Lava's fixed_pt LIF)
V_BITS = 24                        # u and v
V_SHIFT = 6                        # v units per a_in unit: 2**V_SHIFT
V_LIMIT = 2 ** (V_BITS - 1 - V_SHIFT) - 1   # |v| >> V_SHIFT and the 17-bit threshold mantissa
BIAS_MANT_MAX = 4095               # 13-bit signed bias mantissa
BIAS_EXP_MAX = 7                   # 3-bit unsigned bias exponent
BIAS_LIMIT = BIAS_MANT_MAX << BIAS_EXP_MAX   # largest |bias| in v units
DECAY_UNIT = 4096                  # 12-bit decays: 1.0 -> 4096
DECAY_MAX = DECAY_UNIT - 1
GRADED_BITS = 24                   # payload of graded (analog) messages into a Sparse
INPUT_BITS = 16                    # analog inputs quantised to this many bits


# -- scaling ---------------------------------------------------------------------

def pow2_floor(x: float) -> float:
    """The largest power of two <= x (x > 0): scales are shifts."""
    return 2.0 ** math.floor(math.log2(x))


def input_scale(xmax: float) -> float:
    """Scale of an analog input whose |values| stay <= xmax: INPUT_BITS signed."""
    return 2.0 ** (INPUT_BITS - 1 - math.ceil(math.log2(max(xmax, 1e-12))))


# -- rounding --------------------------------------------------------------------

def to_int(x, scale: float = 1.0) -> np.ndarray:
    """round(x * scale) as int32 (numpy's round half to even)."""
    return np.round(np.asarray(x, dtype=np.float64) * scale).astype(np.int32)


def quantise_input(x, scale: float) -> np.ndarray:
    """An analog input in INPUT_BITS-bit integer units (rounded, saturated)."""
    lim = 2 ** (INPUT_BITS - 1) - 1
    return np.clip(np.round(x * scale), -lim, lim).astype(np.int32)


def decay(fraction: float) -> int:
    """12-bit decay mantissa of a per-step decay fraction (1.0 -> DECAY_UNIT)."""
    return int(round(fraction * DECAY_UNIT))


def bias_mantissas(bias_v):
    """(13-bit mantissas, 3-bit exponent) of a bias given in v units: bias_v ~=
    mant << exp, the exponent the smallest that fits the largest |bias_v|."""
    bv = np.asarray(bias_v, dtype=np.float64)
    bmax = float(np.abs(bv).max()) if bv.size else 0.0
    ex = min(max(math.ceil(math.log2(bmax / BIAS_MANT_MAX)), 0), BIAS_EXP_MAX) if bmax > 0 else 0
    return np.clip(np.round(bv / 2.0 ** ex), -BIAS_MANT_MAX, BIAS_MANT_MAX).astype(np.int32), ex


def mantissas(M: sp.csr_matrix):
    """One Sparse's 8-bit mantissas and weight_exp for M (integer units):
    M ~= Mq * 2**e, the exponent the smallest that fits the largest |M|."""
    mmax = float(abs(M).max()) if M.nnz else 0.0
    mixed = M.nnz and M.data.min() < 0 and M.data.max() > 0
    lim = float(WEIGHT_MAX_MIXED if mixed else WEIGHT_MAX)
    e = math.ceil(math.log2(mmax / lim)) if mmax > 0 else 0
    Mq = M.copy()
    Mq.data = Mq.data / 2.0 ** e
    if mixed:  # Lava drops the LSB of mixed-sign 8-bit weights: keep them even
        Mq.data = 2.0 * np.round(Mq.data / 2.0)
    else:
        Mq.data = np.round(Mq.data)
    Mq.data = np.clip(Mq.data, -lim, lim)
    return Mq, int(e)


def split_weights(M: sp.csr_matrix):
    """[(mantissas, weight_exp), ...]: coarse 8-bit mantissas, then the
    rounding residual as a second 8-bit Sparse with its own exponent (~15-bit
    weights in all; the second part is left out where the first is exact)."""
    parts = []
    R = M.tocsr()
    for _ in range(2):
        if not R.nnz or not np.any(R.data):
            break
        Mq, e = mantissas(R)
        R = (R - Mq * 2.0 ** e).tocsr()
        R.eliminate_zeros()
        Mq.eliminate_zeros()
        if Mq.nnz:
            parts.append((Mq.astype(np.int32), e))
    return parts or [(sp.csr_matrix(M.shape, dtype=np.int32), 0)]


def synapses_per_connection(weights) -> int:
    """How many 8-bit synapses the Lava fixed-point mapping uses per connection
    of a layer with these weights (any array of its weight values): 1 where
    8-bit mantissas with one exponent hold them exactly, else 2. A power-of-two
    rescaling (the mapping's population scale) does not change it."""
    w = np.asarray(weights, dtype=np.float64).reshape(1, -1)
    return len(split_weights(sp.csr_matrix(w)))
