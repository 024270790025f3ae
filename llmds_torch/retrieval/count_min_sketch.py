"""Count-Min Sketch: approximate counts of a stream in ``depth x width`` counters.

Each key is hashed to one counter per row; an update adds to those counters and an estimate is
their minimum, so an estimate is never below the true count, and with ``width = ceil(e / epsilon)``
and ``depth = ceil(ln(1 / delta))`` it exceeds the true count by more than ``epsilon * N`` (N the
stream's total count) with probability at most ``delta`` per key. Conservative update raises each
counter only as far as the new estimate needs, which keeps the guarantee and shrinks the error, but
its result depends on the order of updates.

Keys are ints (within int64/uint64), str or bytes. Strings and bytes are hashed with BLAKE2b (stable
across processes, unlike Python's salted ``hash``); each row then mixes the 64-bit key hash with its
own seed through SplitMix64. The sketch also keeps a small pool of candidate heavy hitters (the keys
with the largest estimates seen in updates) so :meth:`CountMinSketch.heavy_hitters` can name them.
"""

from __future__ import annotations

import hashlib
import heapq
import math

import numba
import numpy as np

from llmds_torch.errors import ConfigError

from . import persist
from .errors import CorruptIndexFile, SketchMismatch

_FILE_KIND = "count_min_sketch"
_FILE_VERSION = 1


def key_hashes(keys) -> np.ndarray:
    """Stable 64-bit hashes of keys: ints map to themselves (as uint64), str/bytes through BLAKE2b.

    Parameters
    ----------
    keys : int array ``[n]``, or a sequence of int / str / bytes

    Returns
    -------
    np.ndarray of uint64, ``[n]``
    """
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        flat = keys.reshape(-1)
        return flat.astype(np.int64).view(np.uint64) if flat.dtype.kind == "i" else flat.astype(np.uint64)
    out = np.empty(len(keys), dtype=np.uint64)
    for i, key in enumerate(keys):
        out[i] = _one_hash(key)
    return out


def _one_hash(key) -> int:
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("sketch keys must be int, str or bytes; got bool")
    if isinstance(key, (int, np.integer)):
        if not -(2**63) <= int(key) < 2**64:
            raise TypeError(f"int sketch keys must fit in 64 bits; got {key}")
        return int(key) & (2**64 - 1)
    if isinstance(key, str):
        key = key.encode("utf-8")
    if isinstance(key, bytes):
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    raise TypeError(f"sketch keys must be int, str or bytes; got {type(key).__name__}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _conservative_update(table, columns, counts):
    # columns: [depth, n]; one key at a time, in stream order.
    depth, n = columns.shape
    for i in range(n):
        estimate = table[0, columns[0, i]]
        for r in range(1, depth):
            estimate = min(estimate, table[r, columns[r, i]])
        target = estimate + counts[i]
        for r in range(depth):
            if table[r, columns[r, i]] < target:
                table[r, columns[r, i]] = target


class CountMinSketch:
    """Approximate stream counts.

    Parameters
    ----------
    width : int
        Counters per row, >= 1.
    depth : int
        Rows (independent hashes), >= 1.
    seed : int
        Picks the row hashes; sketches merge only with equal seeds.
    conservative : bool
        Conservative update (smaller error, order-dependent).
    heavy_hitter_capacity : int
        How many candidate heavy hitters to keep (0 turns tracking off).
    """

    def __init__(self, width: int, depth: int, seed: int = 0, conservative: bool = False,
                 heavy_hitter_capacity: int = 64):
        for name, value in (("width", width), ("depth", depth)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1; got {value!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative int; got {seed!r}")
        if not isinstance(heavy_hitter_capacity, (int, np.integer)) or heavy_hitter_capacity < 0:
            raise ConfigError(f"heavy_hitter_capacity must be an int >= 0; got {heavy_hitter_capacity!r}")
        self.width, self.depth, self.seed = int(width), int(depth), int(seed)
        self.conservative = bool(conservative)
        self.heavy_hitter_capacity = int(heavy_hitter_capacity)
        self.table = np.zeros((self.depth, self.width), dtype=np.int64)  # [depth, width]
        self.total = 0
        self._row_seeds = np.random.default_rng(self.seed).integers(0, 2**63, self.depth, dtype=np.uint64)
        self._candidates: dict = {}

    @classmethod
    def from_error(cls, epsilon: float, delta: float, **kwargs) -> "CountMinSketch":
        """A sketch with ``width = ceil(e / epsilon)`` and ``depth = ceil(ln(1 / delta))``.

        Estimates exceed true counts by more than ``epsilon * N`` with probability at most ``delta``.
        """
        if not (0 < epsilon < 1) or not (0 < delta < 1):
            raise ConfigError(f"epsilon and delta must lie in (0, 1); got {epsilon!r}, {delta!r}")
        return cls(math.ceil(math.e / epsilon), math.ceil(math.log(1 / delta)), **kwargs)

    def _columns(self, hashes: np.ndarray) -> np.ndarray:
        """Counter column of each key in each row: ``[depth, n]``."""
        mixed = _splitmix64(hashes[None, :] ^ self._row_seeds[:, None])
        return (mixed % np.uint64(self.width)).astype(np.int64)

    def update(self, keys, counts=None) -> None:
        """Add ``counts`` (default 1 each) for ``keys``, in order.

        Parameters
        ----------
        keys : int array ``[n]`` or sequence of int / str / bytes
        counts : non-negative int array ``[n]``, optional
        """
        hashes = key_hashes(keys)
        if counts is None:
            counts = np.ones(hashes.size, dtype=np.int64)
        else:
            counts = np.asarray(counts).reshape(-1)
            if counts.shape != hashes.shape or (counts.size and counts.dtype.kind not in "iu"):
                raise ConfigError(f"counts must be {hashes.size} integers; got {counts.dtype} {counts.shape}")
            if counts.size and counts.min() < 0:
                raise ConfigError("counts must be >= 0 (a Count-Min Sketch cannot subtract)")
            counts = counts.astype(np.int64)
        if hashes.size == 0:
            return
        columns = self._columns(hashes)
        if self.conservative:
            _conservative_update(self.table, columns, counts)
        else:
            for row in range(self.depth):
                np.add.at(self.table[row], columns[row], counts)
        self.total += int(counts.sum())
        if self.heavy_hitter_capacity:
            self._track_candidates(keys, hashes, columns)

    def _track_candidates(self, keys, hashes, columns) -> None:
        estimates = self.table[np.arange(self.depth)[:, None], columns].min(axis=0)
        _, first = np.unique(hashes, return_index=True)
        keep = first[np.argsort(-estimates[first], kind="stable")[: self.heavy_hitter_capacity]]
        for i in keep.tolist():
            key = keys[i]
            self._candidates[key.item() if isinstance(key, np.generic) else key] = None
        if len(self._candidates) > 2 * self.heavy_hitter_capacity:
            self._candidates = dict.fromkeys(k for k, _ in self.heavy_hitters(self.heavy_hitter_capacity))

    def estimate(self, keys) -> np.ndarray:
        """Estimated counts, never below the true ones: ``[n]`` int64."""
        hashes = key_hashes(keys)
        if hashes.size == 0:
            return np.zeros(0, dtype=np.int64)
        columns = self._columns(hashes)
        return self.table[np.arange(self.depth)[:, None], columns].min(axis=0)

    def __getitem__(self, key) -> int:
        return int(self.estimate([key])[0])

    def heavy_hitters(self, k: int) -> list[tuple]:
        """The ``k`` tracked keys with the largest estimates, as ``(key, estimate)``, largest first."""
        if not self._candidates:
            return []
        keys = list(self._candidates)
        estimates = self.estimate(keys).tolist()
        return heapq.nlargest(int(k), zip(keys, estimates), key=lambda item: item[1])

    def halve(self) -> None:
        """Divide every counter (and the total) by two, rounding down, so old counts fade."""
        self.table >>= 1
        self.total //= 2

    def _check_compatible(self, other) -> None:
        if not isinstance(other, CountMinSketch):
            raise SketchMismatch(f"can only merge a CountMinSketch; got {type(other).__name__}")
        mine = (self.width, self.depth, self.seed, self.conservative)
        theirs = (other.width, other.depth, other.seed, other.conservative)
        if mine != theirs:
            raise SketchMismatch(f"sketches differ: (width, depth, seed, conservative) {mine} vs {theirs}; "
                                 "only sketches of the same shape, seed and update rule merge")

    def merge(self, other: "CountMinSketch") -> None:
        """Add ``other``'s counters into this sketch (same width, depth, seed and update rule only).

        For plain updates the result equals the sketch of the two streams concatenated; for
        conservative ones it is still never below the true counts.

        Raises
        ------
        SketchMismatch
        """
        self._check_compatible(other)
        self.table += other.table
        self.total += other.total
        for key in other._candidates:
            self._candidates[key] = None
        if self.heavy_hitter_capacity and len(self._candidates) > 2 * self.heavy_hitter_capacity:
            self._candidates = dict.fromkeys(k for k, _ in self.heavy_hitters(self.heavy_hitter_capacity))

    def to_bytes(self) -> bytes:
        """Serialize (checksummed, no pickle); see :meth:`from_bytes`."""
        candidates = []
        for key in self._candidates:
            if isinstance(key, bytes):
                candidates.append(["b", key.hex()])
            else:
                candidates.append(["s" if isinstance(key, str) else "i", key])
        meta = {"width": self.width, "depth": self.depth, "seed": self.seed, "conservative": self.conservative,
                "heavy_hitter_capacity": self.heavy_hitter_capacity, "total": self.total, "candidates": candidates}
        return persist.dumps(_FILE_KIND, _FILE_VERSION, {"table": self.table}, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CountMinSketch":
        """Inverse of :meth:`to_bytes`. Raises ``CorruptIndexFile`` on anything inconsistent."""
        bundle = persist.loads(data, _FILE_KIND)
        if bundle.kind_version != _FILE_VERSION:
            raise CorruptIndexFile(f"sketch layout version {bundle.kind_version}; this build reads {_FILE_VERSION}")
        meta = bundle.meta
        try:
            sketch = cls(meta["width"], meta["depth"], meta["seed"], meta["conservative"], meta["heavy_hitter_capacity"])
            table = bundle.arrays["table"]
            if table.shape != sketch.table.shape or table.dtype != np.int64:
                raise ValueError(f"table is {table.dtype} {table.shape}")
            sketch.table = table
            sketch.total = int(meta["total"])
            sketch._candidates = {(bytes.fromhex(v) if t == "b" else v): None for t, v in meta["candidates"]}
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CorruptIndexFile(f"sketch contents are inconsistent: {exc}") from None
        return sketch
