"""8-bit scalar quantisation of HNSW vectors for the graph walk (``storage="sq8"``).

Each stored vector ``x`` ``[dim]`` gets a code ``c`` uint8 ``[dim]`` with
``x[j] ~ low[j] + step[j] * c[j]``, where ``low`` / ``high`` are the per-dimension minimum and
maximum of every vector ever added (the range only grows; when it does, every code is
recomputed) and ``step = (high - low) / 255``. A code is a quarter of the float32 vector, so the
walk reads a quarter of the memory; the exact float32 vectors stay for re-ranking.

The walk compares distances of one query only, so a distance may be off by a constant factor or
offset. The compiled search (``hnsw_numba.turn_query``) turns the query once into ``t`` ``[dim]``
so that the same distance kernel, run on the codes, gives:

- inner product: ``t = q * step`` and ``-<t, c> = -<q, x> + <q, low>`` (an offset);
- squared L2: one step for all dimensions, ``s = max(step)``, ``t = (q - low) / s`` and
  ``||c - t||^2 = ||x - q||^2 / s^2`` (a factor). A per-dimension step would weight dimensions
  differently, so L2 trades some resolution on narrow dimensions for an exact ranking identity.
"""

from __future__ import annotations

import numpy as np

LEVELS = 255


def steps(low: np.ndarray, high: np.ndarray, l2: bool) -> np.ndarray:
    """Step per dimension, float32 ``[dim]``; never 0 (a dimension of zero width gets step 1)."""
    step = (high.astype(np.float64) - low) / LEVELS
    if l2:
        step[:] = step.max(initial=0.0)
    return np.where(step > 0, step, 1.0).astype(np.float32)


def encode(x: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Codes uint8 ``[n, dim]`` of ``x`` float32 ``[n, dim]`` (values in ``[low, high]``)."""
    return np.clip(np.rint((x - low) / step), 0, LEVELS).astype(np.uint8)


__all__ = ["LEVELS", "encode", "steps"]
