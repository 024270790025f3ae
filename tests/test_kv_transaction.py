"""Transactions of the paged KV cache: random operations inside ``cache.transaction()``, an exception
injected anywhere (an explicit raise, pool growth failing mid-way, a kernel failing), and every
observable compared with a snapshot taken before. Plus ``pending_prefix_tokens`` and the leak-free
attach when growth raises outside any transaction."""

import random

import numpy as np
import pytest
import torch

from llmds_torch.errors import ContextWindowExceeded, OutOfPages
from llmds_torch.kv import KVCacheConfig, PagedKVCache, TransactionError

P = 4
SYSTEMS = [[7] * P + [1, 2, 3, 4], [7] * P + [9, 9, 9, 9, 5], [5, 6, 7, 8]]


class Injected(Exception):
    pass


def make_cache(num_pages=10, max_num_pages=24, **kw):
    return PagedKVCache(KVCacheConfig(2, 1, 4, page_size=P, num_pages=num_pages, max_num_pages=max_num_pages,
                                      max_context_len=48, **kw))


def write_pending(cache, seq_ids, rng):
    slots = cache.slot_mapping(seq_ids)
    if slots.numel() == 0:
        return
    for layer in range(cache.config.num_layers):
        kv = torch.from_numpy(rng.standard_normal((slots.numel(), 1, 4)).astype(np.float32))
        cache.write(layer, slots, kv, kv + 1)


def observe(cache, live):
    """Everything a caller can see, for comparison (evictions excepted; see ``compare``)."""
    m = cache.manager
    seqs = {}
    for s in live:
        k, v = cache.get(s)
        seqs[s] = (m.pages(s), cache.token_ids(s), cache.num_written(s), cache.num_cached_tokens(s),
                   cache.pending_token_ids(s), k, v)
    index = dict(m.index.page_of)
    return dict(stats=cache.stats(), seqs=seqs, index=index, pool_shape=tuple(cache.pool.shape),
                block_table=cache.block_table(live).tolist() if live else [],
                pending_keys=dict(m.pending_keys), num_pages=cache.num_pages)


def compare(before, after):
    evicted = after["stats"]["evictions"] - before["stats"]["evictions"]
    sb, sa = dict(before["stats"]), dict(after["stats"])
    assert sa["refusals"] >= sb["refusals"]
    # Pages evicted inside stay evicted: cached -> free, nothing else moves.
    assert sa["pages_cached"] == sb["pages_cached"] - evicted
    assert sa["pages_free"] == sb["pages_free"] + evicted
    assert sa["pages_evictable"] == sb["pages_evictable"] - evicted
    for key in ("refusals", "evictions", "pages_cached", "pages_free", "pages_evictable", "fragmentation"):
        sa.pop(key), sb.pop(key)
    assert sa == sb
    if not evicted:
        assert after["stats"]["fragmentation"] == before["stats"]["fragmentation"]
        assert after["index"] == before["index"]
    else:
        assert after["index"].items() <= before["index"].items()
        assert len(before["index"]) - len(after["index"]) == evicted
    assert after["pool_shape"] == before["pool_shape"] and after["num_pages"] == before["num_pages"]
    assert after["block_table"] == before["block_table"]
    assert after["pending_keys"] == before["pending_keys"]
    assert before["seqs"].keys() == after["seqs"].keys()
    for s, old in before["seqs"].items():
        new = after["seqs"][s]
        assert old[:5] == new[:5]
        assert torch.equal(old[5], new[5]) and torch.equal(old[6], new[6])


def random_prompt(rng):
    return list(rng.choice(SYSTEMS)) + [rng.randrange(40) for _ in range(rng.randrange(0, 7))]


def random_op(cache, rng, nprng, live, created):
    """One random call on the cache; returns nothing, updates ``live`` / ``created``."""
    op = rng.choice(["attach", "attach", "append", "append_batch", "fork", "write", "detach_created"])
    try:
        if op == "attach":
            s = cache.attach(random_prompt(rng), salt=rng.choice([None, None, "b"]))
            live.append(s)
            created.append(s)
        elif op == "append" and live:
            cache.append(rng.choice(live), [rng.randrange(40) for _ in range(rng.randrange(1, 6))])
        elif op == "append_batch" and live:
            seqs = rng.sample(live, rng.randrange(1, len(live) + 1))
            form = rng.randrange(3)
            tokens = [rng.randrange(40) for _ in seqs]
            cache.append_batch(seqs, tokens if form == 0 else [[t] for t in tokens] if form == 1 else np.array(tokens))
        elif op == "fork" and live:
            parent = rng.choice(live)
            write_pending(cache, [parent], nprng)
            s = cache.fork(parent)
            live.append(s)
            created.append(s)
        elif op == "write" and live:
            write_pending(cache, rng.sample(live, rng.randrange(1, len(live) + 1)), nprng)
        elif op == "detach_created" and created:
            s = rng.choice(created)
            cache.detach(s)
            created.remove(s)
            if s in live:
                live.remove(s)
    except (OutOfPages, ContextWindowExceeded):
        pass


def warm_up(cache, rng, nprng):
    """Some history outside any transaction: written, published, cached, shared, COW'd pages."""
    live, created = [], []
    for _ in range(rng.randrange(2, 8)):
        random_op(cache, rng, nprng, live, created)
    write_pending(cache, live, nprng)
    for s in rng.sample(live, len(live) // 2):
        cache.detach(s)
        live.remove(s)
    return live


@pytest.mark.parametrize("seed", range(60))
def test_a_raising_transaction_changes_nothing_observable(seed, monkeypatch):
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    num_pages = rng.choice([8, 12])
    cache = make_cache(num_pages=num_pages, max_num_pages=rng.choice([num_pages, 24]))
    live = warm_up(cache, rng, nprng)
    before = observe(cache, live)
    failure = rng.choice(["raise", "growth", "kernel"])
    steps = rng.randrange(1, 12)
    if failure == "growth":  # the pool's next growth raises, as a device out-of-memory would
        monkeypatch.setattr(cache, "_resize_pool", lambda n: (_ for _ in ()).throw(Injected("grow")))
        cache.manager.on_resize = cache._resize_pool
    if failure == "kernel":  # the n-th copy-on-write / write kernel raises
        import llmds_torch.kv.cache as cache_module
        calls = {"n": rng.randrange(0, 6)}

        def failing(real):
            def run(*args, **kwargs):
                calls["n"] -= 1
                if calls["n"] < 0:
                    raise Injected("kernel")
                return real(*args, **kwargs)
            return run
        monkeypatch.setattr(cache_module, "kv_write", failing(cache_module.kv_write))
        monkeypatch.setattr(cache_module, "page_copy", failing(cache_module.page_copy))
    inside, created = list(live), []
    with pytest.raises(Injected):
        with cache.transaction():
            for _ in range(steps):
                random_op(cache, rng, nprng, inside, created)
            for _ in range(40):  # growth or kernel failures: keep going until one happens
                if failure == "raise":
                    break
                try:
                    created.append(cache.attach(random_prompt(rng) * 3))  # needs pages: grows or evicts
                except OutOfPages:
                    break
                write_pending(cache, list(dict.fromkeys(inside + created)), nprng)
            raise Injected("explicit")
    monkeypatch.undo()
    cache.manager.on_resize = cache._resize_pool
    cache.check_invariants()
    compare(before, observe(cache, live))
    for s in created:
        assert s not in cache
    # The cache still works: more operations, then everything reads back what was written.
    for _ in range(6):
        random_op(cache, rng, nprng, live, [])
    write_pending(cache, live, nprng)
    cache.check_invariants()


@pytest.mark.parametrize("seed", range(10))
def test_a_committed_transaction_keeps_its_changes(seed):
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    twin_a, twin_b = make_cache(salt=b"s"), make_cache(salt=b"s")
    live_a = warm_up(twin_a, random.Random(seed), np.random.default_rng(seed))
    live_b = warm_up(twin_b, random.Random(seed), np.random.default_rng(seed))
    ops = random.Random(seed + 1000)
    with twin_a.transaction():
        for _ in range(8):
            random_op(twin_a, ops, np.random.default_rng(1), live_a, [])
    ops = random.Random(seed + 1000)
    for _ in range(8):
        random_op(twin_b, ops, np.random.default_rng(1), live_b, [])
    twin_a.check_invariants()
    assert live_a == live_b
    a, b = observe(twin_a, live_a), observe(twin_b, live_b)
    assert a["stats"] == b["stats"] and a["block_table"] == b["block_table"]
    del rng, nprng


def test_nested_transactions_and_detaching_older_sequences_are_refused():
    cache = make_cache()
    old = cache.attach([1, 2, 3, 4, 5])
    before = observe(cache, [old])
    with pytest.raises(TransactionError, match="nest"):
        with cache.transaction():
            cache.attach([9, 9, 9, 9, 9])
            with cache.transaction():
                pass
    compare(before, observe(cache, [old]))
    with pytest.raises(TransactionError, match="existed before"):
        with cache.transaction():
            new = cache.attach([3, 3])
            cache.detach(new)  # created inside: allowed
            cache.detach(old)
    compare(before, observe(cache, [old]))
    with pytest.raises(TransactionError, match="defragment"):
        with cache.transaction():
            cache.defragment()
    assert cache.stats()["compactions"] == 0
    cache.check_invariants()


def test_rollback_restores_copy_on_write_and_the_pool_size():
    cache = make_cache(num_pages=4, max_num_pages=16)
    parent = cache.attach([1, 2, 3, 4, 5, 6])
    write_pending(cache, [parent], np.random.default_rng(0))
    child = cache.fork(parent)
    before = observe(cache, [parent, child])
    with pytest.raises(Injected):
        with cache.transaction():
            cache.append_batch([parent, child], [7, 8])  # both share the partial page: one COW copy
            assert cache.stats()["cow_copies"] == 1
            cache.attach(list(range(20, 40)))  # grows the pool
            assert cache.num_pages > 4
            raise Injected
    compare(before, observe(cache, [parent, child]))
    assert cache.manager.allocator.refcount[cache.manager.pages(parent)[-1]] == 2
    assert cache.stats()["cow_bytes"] == 0 and cache.num_pages == 4
    cache.check_invariants()


def test_attach_whose_growth_raises_leaks_nothing():
    """A hit page taken, then growth failing: before, its refcount stayed raised."""
    cache = make_cache(num_pages=4, max_num_pages=16)
    a = cache.attach(list(range(9)))
    write_pending(cache, [a], np.random.default_rng(0))
    before = observe(cache, [a])

    def fail(n):
        raise Injected("out of device memory")
    cache.manager.on_resize = fail
    with pytest.raises(Injected):
        cache.attach(list(range(8)) + list(range(50, 70)))  # hits 2 pages, needs growth for the rest
    cache.check_invariants()
    compare(before, observe(cache, [a]))


def test_pending_prefix_tokens_counts_reserved_unwritten_pages_after_the_cached_ones():
    cache = make_cache(num_pages=24)
    system = list(range(100, 100 + 3 * P))
    assert cache.pending_prefix_tokens(system + [1]) == 0
    a = cache.attach(system + [1, 2])
    assert cache.pending_prefix_tokens(system + [5]) == 3 * P
    assert cache.pending_prefix_tokens(system[:2 * P] + [0] * P + [5]) == 2 * P
    assert cache.pending_prefix_tokens(system, ) == 2 * P  # a prompt never hits its own last token's page
    assert cache.pending_prefix_tokens(system + [5], salt="other") == 0
    slots = cache.slot_mapping([a])
    kv = torch.randn(slots.numel(), 1, 4)
    cache.write(0, slots[:2 * P], kv[:2 * P], kv[:2 * P])  # one layer of two pages: not yet published
    assert cache.pending_prefix_tokens(system + [5]) == 3 * P
    cache.write(1, slots[:2 * P], kv[:2 * P], kv[:2 * P])
    assert cache.pending_prefix_tokens(system + [5]) == P  # two pages are cached now
    b = cache.attach(system + [5])
    assert cache.num_cached_tokens(b) == 2 * P
    assert cache.pending_prefix_tokens(system + [6]) == P  # both a and b reserve the third page
    cache.detach(a)
    assert cache.pending_prefix_tokens(system + [6]) == P
    cache.detach(b)
    assert cache.pending_prefix_tokens(system + [6]) == 0
    cache.check_invariants()


def test_limits_are_properties():
    cache = make_cache(num_pages=6, max_num_pages=20)
    assert (cache.page_size, cache.max_num_pages, cache.max_context_len) == (P, 20, 48)
    fixed = PagedKVCache(KVCacheConfig(1, 1, 4, page_size=8, num_pages=5))
    assert (fixed.page_size, fixed.max_num_pages, fixed.max_context_len) == (8, 5, None)
