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
from .errors import CorruptIndexFile, SketchMismatch, SketchOverflow
from .validation import array, meta_bool, meta_int, meta_type, require

_FILE_KIND = "count_min_sketch"
_FILE_VERSION = 1
_COUNT_MAX = 2**63 - 1


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


def _checked_counts(counts, n: int) -> tuple[np.ndarray, int]:
    """``counts`` as int64 ``[n]`` after checking shape, dtype and range; and their exact sum."""
    counts = np.asarray(counts)
    if counts.shape != (n,) or (n and counts.dtype.kind not in "iu"):
        raise ConfigError(f"counts must be a 1-D array of {n} integers; got {counts.dtype} {list(counts.shape)}")
    if n == 0:
        return counts.astype(np.int64), 0
    low, high = int(counts.min()), int(counts.max())
    if low < 0:
        raise ConfigError("counts must be >= 0 (a Count-Min Sketch cannot subtract)")
    if high > _COUNT_MAX:
        raise ConfigError(f"counts must be at most 2**63 - 1; got {high}")
    counts = counts.astype(np.int64)
    added = int(counts.sum()) if high <= _COUNT_MAX // n else sum(counts.tolist())  # exact, never wraps
    return counts, added


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

        Everything is checked before any counter changes.

        Parameters
        ----------
        keys : 1-D int array ``[n]`` or sequence of int / str / bytes
        counts : 1-D array ``[n]`` of integers in ``[0, 2**63 - 1]``, optional

        Raises
        ------
        TypeError
            A key that is not an int (within 64 bits), str or bytes.
        ConfigError
            Keys or counts that are not 1-D, counts of another length or dtype, or out of range.
        SketchOverflow
            If the total would pass ``2**63 - 1``; every counter is at most the total, so no counter
            can wrap either.
        """
        if isinstance(keys, np.ndarray) and keys.ndim != 1:
            raise ConfigError(f"keys must be 1-D; got an array of shape {list(keys.shape)}")
        hashes = key_hashes(keys)
        if counts is None:
            counts = np.ones(hashes.size, dtype=np.int64)
            added = hashes.size
        else:
            counts, added = _checked_counts(counts, hashes.size)
        if added > _COUNT_MAX - self.total:
            raise SketchOverflow(f"adding {added} to the total {self.total} passes 2**63 - 1")
        if hashes.size == 0:
            return
        columns = self._columns(hashes)
        if self.conservative:
            _conservative_update(self.table, columns, counts)
        else:
            for row in range(self.depth):
                np.add.at(self.table[row], columns[row], counts)
        self.total += added
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
        SketchOverflow
            If the merged total would pass ``2**63 - 1`` (nothing changes).
        """
        self._check_compatible(other)
        if other.total > _COUNT_MAX - self.total:
            raise SketchOverflow(f"merging totals {self.total} and {other.total} passes 2**63 - 1")
        self.table += other.table
        self.total += other.total
        for key in other._candidates:
            self._candidates[key] = None
        if self.heavy_hitter_capacity and len(self._candidates) > 2 * self.heavy_hitter_capacity:
            self._candidates = dict.fromkeys(k for k, _ in self.heavy_hitters(self.heavy_hitter_capacity))

    def to_bytes(self, *, key: bytes | None = None) -> bytes:
        """Serialize (no pickle; SHA-256 checksummed, or HMAC-SHA256 signed with ``key``, see
        :mod:`llmds_torch.retrieval.persist`); see :meth:`from_bytes`."""
        candidates = []
        for key_ in self._candidates:
            if isinstance(key_, bytes):
                candidates.append(["b", key_.hex()])
            else:
                candidates.append(["s" if isinstance(key_, str) else "i", key_])
        meta = {"width": self.width, "depth": self.depth, "seed": self.seed, "conservative": self.conservative,
                "heavy_hitter_capacity": self.heavy_hitter_capacity, "total": self.total, "candidates": candidates}
        return persist.dumps(_FILE_KIND, _FILE_VERSION, {"table": self.table}, meta, key)

    @classmethod
    def from_bytes(cls, data: bytes, *, key: bytes | None = None) -> "CountMinSketch":
        """Inverse of :meth:`to_bytes` (with the same ``key``, if any).

        Checks before use: the table is int64 ``[depth, width]`` as the metadata says, every counter
        and the total are >= 0, and no row sums past the total (every update adds its count to one
        counter per row and to the total; halving and conservative updates keep rows below it), so
        estimates can never fall below true counts because of the file. Candidate keys must be
        int / str / bytes. Raises ``CorruptIndexFile`` naming the field.
        """
        bundle = persist.loads(data, _FILE_KIND, key)
        if bundle.kind_version != _FILE_VERSION:
            raise CorruptIndexFile(f"sketch layout version {bundle.kind_version}; this build reads {_FILE_VERSION}")
        meta = bundle.meta
        table = array(bundle.arrays, "table", np.int64, (None, None))
        depth, width = table.shape
        require(depth >= 1 and width >= 1, f"array 'table' has shape {[depth, width]}; it needs a row and a column")
        for name, size in (("width", width), ("depth", depth)):
            require(meta.get(name) == size and type(meta.get(name)) is int,
                    f"field {name!r} is {meta.get(name)!r:.40}; the table says {size}")
        seed = meta_int(meta, "seed", 0, 2**128)
        capacity = meta_int(meta, "heavy_hitter_capacity", 0, 2**31 - 1)
        conservative = meta_bool(meta, "conservative")
        total = meta_int(meta, "total", 0, _COUNT_MAX)
        require(int(table.min()) >= 0, "array 'table' holds negative counters")
        row_sums = table.sum(axis=1, dtype=np.float64)
        require(bool((row_sums <= total).all()), f"array 'table' has a row summing past the field 'total' {total}")
        candidates = {}
        for entry in meta_type(meta, "candidates", list):
            candidates[_candidate_key(entry)] = None
        sketch = cls(width, depth, seed, conservative, capacity)
        sketch.table, sketch.total, sketch._candidates = table, total, candidates
        return sketch


def _candidate_key(entry):
    """One saved candidate ``[tag, value]``: ``["i", int]``, ``["s", str]`` or ``["b", hex str]``."""
    if isinstance(entry, list) and len(entry) == 2:
        tag, value = entry
        if tag == "i" and type(value) is int and -(2**63) <= value < 2**64:
            return value
        if tag == "s" and isinstance(value, str):
            return value
        if tag == "b" and isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
    raise CorruptIndexFile(f"field 'candidates' holds {entry!r:.60}; expected [\"i\", int], [\"s\", str] or "
                           f"[\"b\", hex]")
