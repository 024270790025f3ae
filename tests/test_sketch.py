"""Count-Min Sketch against exact counts: never under, within epsilon*N for 1-delta of keys, merges."""

import math
from collections import Counter

import numpy as np
import pytest

from llmds_torch.errors import ConfigError
from llmds_torch.retrieval.count_min_sketch import CountMinSketch
from llmds_torch.retrieval.errors import CorruptIndexFile, SketchMismatch, SketchOverflow


def zipf_stream(seed, n=50_000, exponent=1.1, universe=20_000):
    rng = np.random.default_rng(seed)
    return (rng.zipf(exponent, n) % universe).astype(np.int64)


def test_from_error_dimensions():
    sketch = CountMinSketch.from_error(0.001, 0.01)
    assert sketch.width == math.ceil(math.e / 0.001) and sketch.depth == math.ceil(math.log(100))
    with pytest.raises(ConfigError):
        CountMinSketch.from_error(0, 0.1)
    with pytest.raises(ConfigError):
        CountMinSketch(0, 3)


@pytest.mark.parametrize("conservative", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_under_and_within_epsilon_n(conservative, seed):
    epsilon, delta = 0.002, 0.05
    stream = zipf_stream(seed)
    sketch = CountMinSketch.from_error(epsilon, delta, seed=seed, conservative=conservative)
    for batch in np.array_split(stream, 7):
        sketch.update(batch)
    truth = Counter(stream.tolist())
    keys = np.array(sorted(truth))
    estimates = sketch.estimate(keys)
    true_counts = np.array([truth[k] for k in keys.tolist()])
    assert np.all(estimates >= true_counts)
    within = np.mean(estimates - true_counts <= epsilon * len(stream))
    assert within >= 1 - delta
    assert sketch.total == len(stream)


def test_conservative_error_is_no_larger():
    stream = zipf_stream(3)
    plain, conservative = CountMinSketch(300, 4), CountMinSketch(300, 4, conservative=True)
    plain.update(stream)
    conservative.update(stream)
    keys = np.unique(stream)
    assert np.all(conservative.estimate(keys) <= plain.estimate(keys))


@pytest.mark.parametrize("conservative", [False, True])
def test_batched_equals_one_at_a_time(conservative):
    stream = zipf_stream(4, n=3000)
    batched, single = CountMinSketch(97, 3, conservative=conservative), CountMinSketch(97, 3, conservative=conservative)
    batched.update(stream)
    for key in stream.tolist():
        single.update([key])
    np.testing.assert_array_equal(batched.table, single.table)


def test_merge_equals_sketch_of_concatenated_stream():
    a, b = zipf_stream(5), zipf_stream(6)
    left, right, whole = CountMinSketch(500, 5, seed=9), CountMinSketch(500, 5, seed=9), CountMinSketch(500, 5, seed=9)
    left.update(a)
    right.update(b)
    whole.update(np.concatenate([a, b]))
    left.merge(right)
    np.testing.assert_array_equal(left.table, whole.table)
    assert left.total == whole.total
    assert [k for k, _ in left.heavy_hitters(5)] == [k for k, _ in whole.heavy_hitters(5)]


@pytest.mark.parametrize("other", [CountMinSketch(100, 4), CountMinSketch(200, 3), CountMinSketch(200, 4, seed=1),
                                   CountMinSketch(200, 4, conservative=True)])
def test_merge_refuses_different_sketches(other):
    sketch = CountMinSketch(200, 4)
    sketch.update([1, 2, 3])
    before = sketch.table.copy()
    with pytest.raises(SketchMismatch):
        sketch.merge(other)
    np.testing.assert_array_equal(sketch.table, before)
    with pytest.raises(SketchMismatch):
        sketch.merge("not a sketch")


def test_heavy_hitters_are_the_true_top_keys():
    stream = zipf_stream(7, n=100_000, exponent=1.3)
    sketch = CountMinSketch.from_error(0.001, 0.01, heavy_hitter_capacity=32)
    for batch in np.array_split(stream, 20):
        sketch.update(batch)
    truth = Counter(stream.tolist())
    expected = [k for k, _ in truth.most_common(10)]
    found = sketch.heavy_hitters(10)
    assert [k for k, _ in found] == expected
    assert all(est >= truth[k] for k, est in found)


def test_string_keys_are_stable_and_counted():
    sketch = CountMinSketch(1024, 4)
    sketch.update(["alpha", "beta", "alpha", b"raw", "alpha"])
    assert sketch["alpha"] >= 3 and sketch["beta"] >= 1 and sketch[b"raw"] >= 1
    assert sketch.heavy_hitters(1)[0][0] == "alpha"
    with pytest.raises(TypeError):
        sketch.update([1.5])
    with pytest.raises(ConfigError):
        sketch.update([1, 2], counts=[1, -1])


def test_serialization_round_trip_and_corruption():
    sketch = CountMinSketch(300, 4, seed=3, conservative=True)
    sketch.update(zipf_stream(8, n=5000))
    sketch.update(["text key", b"\x00bytes"])
    restored = CountMinSketch.from_bytes(sketch.to_bytes())
    np.testing.assert_array_equal(restored.table, sketch.table)
    assert restored.heavy_hitters(10) == sketch.heavy_hitters(10)
    assert (restored.seed, restored.conservative, restored.total) == (3, True, sketch.total)
    restored.update(["text key"])
    assert restored["text key"] >= sketch["text key"] + 1
    data = bytearray(sketch.to_bytes())
    data[40] ^= 1
    with pytest.raises(CorruptIndexFile):
        CountMinSketch.from_bytes(bytes(data))


def test_halve():
    sketch = CountMinSketch(64, 2)
    sketch.update([1] * 9)
    sketch.halve()
    assert sketch[1] == 4 and sketch.total == 4


def _snapshot(sketch):
    return sketch.table.copy(), sketch.total, dict(sketch._candidates)


def _same(a, b):
    return np.array_equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("conservative", [False, True])
def test_bad_updates_change_nothing(conservative):
    sketch = CountMinSketch(64, 3, conservative=conservative)
    sketch.update([1, 2, 3], [4, 5, 6])
    before = _snapshot(sketch)
    bad = [
        (np.arange(4).reshape(2, 2), None, ConfigError),                        # 2-D keys
        ([1, 2], np.array([[1], [2]]), ConfigError),                           # 2-D counts
        ([1, 2], np.array([2**64 - 1, 1], np.uint64), ConfigError),            # passes a >= 0 check, wraps as int64
        ([1, 2], [1.0, 2.0], ConfigError),                                     # float counts
        ([1, 2], [1], ConfigError),                                            # one count short
        ([1, 2.5], None, TypeError),                                           # a float key
    ]
    for keys, counts, error in bad:
        with pytest.raises(error):
            sketch.update(keys, counts)
        assert _same(_snapshot(sketch), before)


@pytest.mark.parametrize("conservative", [False, True])
def test_counts_never_wrap(conservative):
    sketch = CountMinSketch(64, 3, conservative=conservative)
    with pytest.raises(SketchOverflow):
        sketch.update([7, 7], [2**62, 2**62])  # 2**63 does not fit in int64
    assert sketch.total == 0 and not sketch.table.any()
    sketch.update([7], [2**63 - 2])
    with pytest.raises(SketchOverflow):
        sketch.update([8], [2])
    sketch.update([8], [1])
    assert sketch[7] == 2**63 - 2 and sketch.estimate([7, 8]).min() >= 1 and (sketch.table >= 0).all()
    with pytest.raises(SketchOverflow):
        sketch.merge(sketch)
    assert sketch.total == 2**63 - 1


def test_many_large_counts_sum_exactly():
    sketch = CountMinSketch(8, 2)
    with pytest.raises(SketchOverflow):
        sketch.update(np.arange(2000), np.full(2000, 2**53, np.int64))  # the int64 sum would wrap
    sketch.update(np.arange(2000), np.full(2000, 2**52, np.int64))
    assert sketch.total == 2000 * 2**52
