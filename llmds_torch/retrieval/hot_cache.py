"""A result cache for hot queries: TinyLFU admission by Count-Min Sketch frequency, LRU eviction.

Every lookup records the key in a sketch. A missing key is inserted freely while there is room;
when full, the newcomer is admitted only if its sketch frequency is strictly greater than that of
the least recently used entry (the victim), which is then evicted; otherwise the newcomer is
rejected and the cache is unchanged. After every ``sample_size`` recorded lookups all sketch
counters are halved, so popularity fades. :meth:`HotQueryCache.prime` fills the cache from a
sketch's heavy hitters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from llmds_torch.errors import ConfigError

from .count_min_sketch import CountMinSketch

_MISSING = object()


class HotQueryCache:
    """LRU cache with TinyLFU admission.

    Parameters
    ----------
    capacity : int
        Most entries held, >= 1.
    sketch : CountMinSketch, optional
        Frequency sketch (default: conservative, width ``max(64, 8 * capacity)``, depth 4).
    sample_size : int, optional
        Lookups between halvings (default ``10 * capacity``).
    """

    def __init__(self, capacity: int, sketch: CountMinSketch | None = None, sample_size: int | None = None,
                 seed: int = 0):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"capacity must be an int >= 1; got {capacity!r}")
        sample_size = 10 * capacity if sample_size is None else sample_size
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ConfigError(f"sample_size must be an int >= 1; got {sample_size!r}")
        self.capacity = capacity
        self.sample_size = sample_size
        self.sketch = sketch if sketch is not None else CountMinSketch(
            max(64, 8 * capacity), 4, seed=seed, conservative=True, heavy_hitter_capacity=capacity)
        self._entries: OrderedDict = OrderedDict()
        self._since_halving = 0
        self.hits = self.misses = self.admitted = self.rejected = self.evicted = self.halvings = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def keys(self) -> list:
        """Cached keys, least recently used first."""
        return list(self._entries)

    def record(self, key) -> None:
        """Count one lookup of ``key`` in the sketch, halving all counts every ``sample_size`` lookups."""
        self.sketch.update([key])
        self._since_halving += 1
        if self._since_halving >= self.sample_size:
            self.sketch.halve()
            self._since_halving = 0
            self.halvings += 1

    def get(self, key, default=None):
        """Record the lookup; return the cached value (marking it recently used) or ``default``."""
        self.record(key)
        value = self._entries.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return default
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key, value) -> bool:
        """Offer a value; return whether it is now cached (see the module docstring for admission)."""
        if key in self._entries:
            self._entries[key] = value
            self._entries.move_to_end(key)
            return True
        if len(self._entries) >= self.capacity:
            victim = next(iter(self._entries))
            if self.sketch[key] <= self.sketch[victim]:
                self.rejected += 1
                return False
            del self._entries[victim]
            self.evicted += 1
        self._entries[key] = value
        self.admitted += 1
        return True

    def prime(self, fetch: Callable, source: CountMinSketch | None = None, limit: int | None = None,
              accept: Callable | None = None) -> int:
        """Fill the cache with ``fetch(key)`` for the heaviest keys of ``source`` (default: own sketch).

        At most ``limit`` (default ``capacity``) keys are taken, skipping keys for which
        ``accept(key)`` is false.

        Keys go in lightest first, so the heaviest end most recently used; entries bypass admission.
        Counts from another sketch are added to this cache's sketch so primed entries are not the
        first victims. Return how many entries were inserted.
        """
        source = self.sketch if source is None else source
        heavy = source.heavy_hitters(max(source.heavy_hitter_capacity, self.capacity))
        heavy = [(key, count) for key, count in heavy if accept is None or accept(key)]
        heavy = heavy[: min(self.capacity, limit or self.capacity)]
        inserted = 0
        for key, count in reversed(heavy):
            if source is not self.sketch:
                self.sketch.update([key], [count])
            if key not in self._entries and len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
                self.evicted += 1
            self._entries[key] = fetch(key)
            self._entries.move_to_end(key)
            inserted += 1
        return inserted

    def clear(self) -> None:
        """Drop every cached value (the frequency sketch is kept)."""
        self._entries.clear()

    def stats(self) -> dict:
        lookups = self.hits + self.misses
        return {"size": len(self._entries), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0, "admitted": self.admitted,
                "rejected": self.rejected, "evicted": self.evicted, "halvings": self.halvings}
