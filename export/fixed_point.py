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
  drops the LSB). The Lava mapping writes each link as ONE such group
  (:func:`weight_parts` "single": one 8-bit synapse per connection, what a
  Loihi core holds), which needs weights that fit (a quantization-aware
  fine-tuned checkpoint, :func:`fake_quant_grid`); or, as an explicit option
  ("split"), as two groups on the same axons, the coarse mantissas and the
  rounding residual (:func:`split_weights`), i.e. two synapses per connection
  wherever the first is not exact.
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


def weight_exp(mmax: float, lim: float) -> int:
    """The smallest exponent e with mmax / 2**e <= lim (mmax > 0). A ratio that is
    a power of two up to float error (a weight trained onto the grid, then
    scaled by non-dyadic gains and back) counts as that power: otherwise the
    exponent would jump by one and halve the grid the weight was trained on."""
    r = math.log2(mmax / lim)
    return int(round(r)) if abs(r - round(r)) < 1e-9 else math.ceil(r)


def mantissas(M: sp.csr_matrix):
    """One Sparse's 8-bit mantissas and weight_exp for M (integer units):
    M ~= Mq * 2**e, the exponent the smallest that fits the largest |M|."""
    mmax = float(abs(M).max()) if M.nnz else 0.0
    mixed = M.nnz and M.data.min() < 0 and M.data.max() > 0
    lim = float(WEIGHT_MAX_MIXED if mixed else WEIGHT_MAX)
    e = weight_exp(mmax, lim) if mmax > 0 else 0
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
    return 1 if grid_error(weights) <= FIT_TOL else 2


# -- one weight per synapse ------------------------------------------------------

WEIGHT_MODES = ("single", "split")
FIT_TOL = 1e-6   # |mantissa - integer| a weight may be off the 8-bit grid and still "fit"


def weight_parts(M: sp.csr_matrix, mode: str = "single"):
    """The Sparse parts [(mantissas, weight_exp), ...] of a link in integer units:
    "single" one 8-bit group (:func:`mantissas`), "split" :func:`split_weights`."""
    if mode == "split":
        return split_weights(M)
    if mode != "single":
        raise ValueError(f"weight mode must be one of {WEIGHT_MODES}, got {mode!r}")
    Mq, e = mantissas(M.tocsr())
    Mq.eliminate_zeros()
    return [(Mq.astype(np.int32), e)]


def grid_error(weights) -> float:
    """How far (in units of the last mantissa bit) the weights of one link are
    from the 8-bit grid :func:`mantissas` puts them on: 0 (up to float error,
    < FIT_TOL) for weights that fit one 8-bit synapse; a power-of-two rescale
    does not change it."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    w = w[w != 0]
    if not w.size:
        return 0.0
    mixed = w.min() < 0 < w.max()
    lim = float(WEIGHT_MAX_MIXED if mixed else WEIGHT_MAX)
    step = 2.0 ** weight_exp(float(np.abs(w).max()), lim) * (2.0 if mixed else 1.0)
    q = w / step
    return float(np.abs(q - np.round(q)).max())


def fake_quant_grid(w_abs_max: float, mixed: bool) -> tuple[float, float]:
    """(step, largest |value|) of the 8-bit grid that :func:`mantissas` writes a
    link with largest |weight| w_abs_max on (one shared power-of-two exponent;
    mixed sign: even mantissas up to 254): what quantization-aware training
    rounds to, so the mapping then writes exactly the trained weights."""
    lim = float(WEIGHT_MAX_MIXED if mixed else WEIGHT_MAX)
    e = weight_exp(w_abs_max, lim) if w_abs_max > 0 else 0
    return 2.0 ** e * (2.0 if mixed else 1.0), lim * 2.0 ** e


def lava_sparse_weights(Mq: sp.csr_matrix) -> sp.csr_matrix:
    """What Lava's PySparseModelBitAcc makes of 8-bit mantissas at its first step
    (lava.utils.weightutils clip_weights then truncate_weights, num_weight_bits
    8): clipped to the sign mode's 8-bit range, mixed sign with the LSB
    dropped. The mapping's mantissas already satisfy this (a no-op on them);
    the emulator applies it so both see the same weights whatever they get."""
    W = Mq.tocsr().astype(np.int64)
    d = W.data
    if d.size == 0:
        return W
    lo, hi = float(d.min()), float(d.max())
    if W.nnz < W.shape[0] * W.shape[1]:      # implicit zeros count (np.min of a spmatrix)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo >= 0:
        d = np.minimum(d, 255)
    elif hi <= 0:
        d = -np.minimum(-d, 255)
    else:
        d = np.clip(d, -256, 255)
        d = (d >> 1) << 1
    W = W.copy()
    W.data = d
    W.eliminate_zeros()
    return W
