"""HotQueryCache against an exact-count TinyLFU written as plain loops."""

from collections import Counter, OrderedDict

import numpy as np
import pytest

from llmds_torch.errors import ConfigError
from llmds_torch.retrieval.count_min_sketch import CountMinSketch
from llmds_torch.retrieval.hot_cache import HotQueryCache


class ExactTinyLFU:
    """The same policy with exact counts (the oracle)."""

    def __init__(self, capacity, sample_size):
        self.capacity, self.sample_size = capacity, sample_size
        self.counts, self.entries, self.since = Counter(), OrderedDict(), 0

    def get(self, key):
        self.counts[key] += 1
        self.since += 1
        if self.since >= self.sample_size:
            self.counts = Counter({k: c // 2 for k, c in self.counts.items()})
            self.since = 0
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key, value):
        if key in self.entries:
            self.entries[key] = value
            self.entries.move_to_end(key)
            return True
        if len(self.entries) >= self.capacity:
            victim = next(iter(self.entries))
            if self.counts[key] <= self.counts[victim]:
                return False
            del self.entries[victim]
        self.entries[key] = value
        return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_exact_tinylfu_when_the_sketch_is_exact(seed):
    rng = np.random.default_rng(seed)
    capacity, sample_size = 16, 120
    exact_sketch = CountMinSketch(1 << 18, 4, seed=seed, conservative=True)  # no collisions among 300 keys
    cache, oracle = HotQueryCache(capacity, sketch=exact_sketch, sample_size=sample_size), ExactTinyLFU(capacity, sample_size)
    queries = [f"q{x % 300}" for x in rng.zipf(1.2, 3000)]
    for query in queries:
        got, want = cache.get(query), oracle.get(query)
        assert got == want
        if got is None:
            assert cache.put(query, f"result of {query}") == oracle.put(query, f"result of {query}")
        assert cache.keys() == list(oracle.entries)
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == len(queries)
    assert stats["halvings"] == len(queries) // sample_size
    assert stats["hits"] > 0 and stats["rejected"] > 0 and stats["evicted"] > 0


def test_admission_prefers_frequent_newcomers_only():
    cache = HotQueryCache(2, sample_size=1000)
    for key in ["a", "b"]:
        cache.get(key)
        cache.put(key, key.upper())
    cache.get("c")  # once, like the victim "a": not admitted
    assert cache.put("c", "C") is False and cache.keys() == ["a", "b"]
    cache.get("c")  # now more frequent than "a"
    assert cache.put("c", "C") is True and cache.keys() == ["b", "c"]
    assert cache.get("c") == "C" and cache.get("a") is None


def test_halving_lets_old_popularity_fade():
    cache = HotQueryCache(1, sample_size=10)
    for _ in range(9):
        cache.get("old")
    cache.put("old", 1)
    for _ in range(40):  # four halvings later "old" is counted low, "new" wins admission
        cache.get("new")
    assert cache.sketch["old"] < cache.sketch["new"]
    assert cache.put("new", 2) and cache.keys() == ["new"]


def test_prime_from_heavy_hitters():
    source = CountMinSketch(4096, 4, heavy_hitter_capacity=8)
    source.update(["hot"] * 50 + ["warm"] * 20 + ["cold"] * 2 + [f"rare{i}" for i in range(30)])
    cache = HotQueryCache(2)
    inserted = cache.prime(lambda key: f"fetched {key}", source=source)
    assert inserted == 2 and cache.keys() == ["warm", "hot"]
    assert cache.get("hot") == "fetched hot"
    assert cache.sketch["hot"] >= 50  # primed counts protect the entries from the first newcomer
    cache.get("newcomer")
    assert cache.put("newcomer", 0) is False


def test_bad_config():
    for bad in [0, -1, 1.5, True]:
        with pytest.raises(ConfigError):
            HotQueryCache(bad)
    with pytest.raises(ConfigError):
        HotQueryCache(4, sample_size=0)
