"""Loihi fixed-point weights: 8-bit mantissas with one shared exponent per synapse group.

Pure numpy/scipy, so both the Lava worker (Python 3.10, hardware.lava.mapping)
and the energy report (Python 3.11) use the same rule. Lava's fixed_pt Sparse
holds 8-bit weight mantissas (mixed-sign weights: even values in [-256, 254],
Lava drops the LSB) and one weight_exp; the mapping writes each link as up to
two such processes on the same axons, the coarse mantissas and the rounding
residual (see the notes in hardware/lava/mapping.py), i.e. two synapses per
connection wherever the first is not exact.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


def mantissas(M: sp.csr_matrix):
    """One Sparse's 8-bit mantissas and weight_exp for M (integer units):
    M ~= Mq * 2**e, the exponent the smallest that fits the largest |M|."""
    mmax = float(abs(M).max()) if M.nnz else 0.0
    mixed = M.nnz and M.data.min() < 0 and M.data.max() > 0
    lim = 254.0 if mixed else 255.0
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
