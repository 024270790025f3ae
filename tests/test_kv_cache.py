"""Unit tests of the paged KV cache: vLLM-style prefix-sharing scenarios, copy-on-write, eviction,
pins, growth, compaction and shrinking, tables for kernels, and bad input."""

import numpy as np
import pytest
import torch

from llmds_torch.errors import ConfigError, ContextWindowExceeded, InvalidTokenIds, OutOfPages, UnknownSequence
from llmds_torch.kernels import KernelInputError
from llmds_torch.kv import BLOCK_TABLE_PAD, BlockManager, KVCacheConfig, PagedKVCache

P = 4  # page size used throughout
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_cache(num_pages=16, layers=2, heads=2, dim=8, dtype=torch.float32, device="cpu", **kw):
    return PagedKVCache(KVCacheConfig(layers, heads, dim, page_size=P, num_pages=num_pages, dtype=dtype,
                                      device=device, **kw))


def write_all(cache, seq_ids, seed=0):
    """Write random KV for every pending token of ``seq_ids``; return it as [L, T, H, D] per seq."""
    c = cache.config
    slots = cache.slot_mapping(seq_ids)
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(c.num_layers, slots.numel(), c.num_kv_heads, c.head_dim, generator=g).to(c.dtype)
    v = torch.randn(c.num_layers, slots.numel(), c.num_kv_heads, c.head_dim, generator=g).to(c.dtype)
    for layer in range(c.num_layers):
        cache.write(layer, slots, k[layer].to(cache.device), v[layer].to(cache.device))
    return k, v


def prompt(n, start=100):
    return list(range(start, start + n))


# ---------------------------------------------------------------- prefix sharing
def test_two_prompts_sharing_three_full_pages_share_exactly_those():
    cache = make_cache()
    system = prompt(3 * P)
    a = cache.attach(system + [1, 2])
    write_all(cache, [a])
    b = cache.attach(system + [3, 4, 5])
    assert cache.num_cached_tokens(b) == 3 * P
    pa, pb = cache.manager.pages(a), cache.manager.pages(b)
    assert pa[:3] == pb[:3] and pa[3] != pb[3]
    assert all(cache.manager.allocator.refcount[p] == 2 for p in pa[:3])
    assert cache.num_written(b) == 3 * P  # the hit's KV is there already


def test_detached_prompt_is_found_again_and_reads_back_identically():
    cache = make_cache()
    p = prompt(3 * P + 1)
    a = cache.attach(p)
    k, v = write_all(cache, [a])
    pages = cache.manager.pages(a)
    cache.detach(a)
    assert cache.stats()["pages_cached"] == 3  # the partial last page was freed
    b = cache.attach(p)
    assert cache.num_cached_tokens(b) == 3 * P
    assert cache.manager.pages(b)[:3] == pages[:3]
    kb, vb = cache.get(b)
    assert torch.equal(kb, k[:, :3 * P]) and torch.equal(vb, v[:, :3 * P])


def test_partial_last_page_is_never_shared():
    cache = make_cache()
    a = cache.attach(prompt(2 * P + 2))
    write_all(cache, [a])
    b = cache.attach(prompt(2 * P + 2) + [9])
    assert cache.num_cached_tokens(b) == 2 * P
    assert cache.manager.pages(a)[2] != cache.manager.pages(b)[2]


def test_at_most_len_minus_one_tokens_reported_cached():
    cache = make_cache()
    a = cache.attach(prompt(2 * P))
    write_all(cache, [a])
    b = cache.attach(prompt(2 * P))  # identical, page-aligned: the last page is recomputed
    assert cache.num_cached_tokens(b) == P
    assert cache.slot_mapping([b]).numel() == P


def test_page_is_published_only_after_every_layer_wrote_it():
    cache = make_cache(layers=3)
    a = cache.attach(prompt(2 * P + 1))
    slots = cache.slot_mapping([a])
    kv = torch.randn(slots.numel(), 2, 8)
    cache.write(0, slots, kv, kv)
    cache.write(2, slots, kv, kv)
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 0
    cache.write(1, slots, kv, kv)
    assert cache.num_written(a) == 2 * P + 1
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 2 * P


def test_identical_page_published_twice_keeps_the_first_copy():
    cache = make_cache()
    a = cache.attach(prompt(P + 1))
    b = cache.attach(prompt(P + 1))  # nothing published yet: no hit
    write_all(cache, [a])
    write_all(cache, [b], seed=1)
    first = cache.manager.pages(a)[0]
    c = cache.attach(prompt(P + 1))
    assert cache.manager.pages(c)[0] == first
    cache.check_invariants()


def test_request_salt_isolates_tenants_and_cache_salt_is_random():
    cache = make_cache()
    a = cache.attach(prompt(2 * P + 1), salt="tenant-a")
    write_all(cache, [a])
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1), salt=b"tenant-b")) == 0
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 0
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1), salt="tenant-a")) == 2 * P
    assert make_cache().manager.cache_salt != make_cache().manager.cache_salt


def test_forced_hash_collision_is_caught_by_token_check():
    def constant_hash(data: bytes) -> bytes:  # every page key collides
        return b"\x00" * 32

    manager = BlockManager(16, P, hash_fn=constant_hash, salt=b"")
    a = manager.attach(prompt(P + 1))
    manager.mark_written(a)
    b = manager.attach(prompt(P + 1, start=500))
    assert manager.num_cached_tokens(b) == 0
    assert manager.stats()["hash_collisions"] == 1
    # Without the check the same collision would hand out the wrong page: the test can fail.
    unchecked = BlockManager(16, P, hash_fn=constant_hash, salt=b"", verify_tokens=False)
    a = unchecked.attach(prompt(P + 1))
    unchecked.mark_written(a)
    assert unchecked.num_cached_tokens(unchecked.attach(prompt(P + 1, start=500))) == P


def test_prefix_key_is_chained_sha256_over_little_endian_int32():
    import hashlib
    import struct
    manager = BlockManager(8, 2, salt=b"S")
    a = manager.attach([1, 2, 3, 4, 5])
    manager.mark_written(a)
    salt_block = struct.pack("<I", 1) + b"S" + struct.pack("<I", 0) + struct.pack("<I", 0)
    h0 = hashlib.sha256(salt_block + struct.pack("<2i", 1, 2)).digest()
    h1 = hashlib.sha256(h0 + salt_block + struct.pack("<2i", 3, 4)).digest()
    assert manager.seqs[a].keys == [h0, h1]
    assert manager.index.page_of[h1] == manager.pages(a)[1]


# ---------------------------------------------------------------- eviction, pins, growth
def test_eviction_is_lru_and_tail_first():
    cache = make_cache(num_pages=6)
    a = cache.attach(prompt(2 * P + 1, start=0))
    write_all(cache, [a])
    b = cache.attach(prompt(2 * P + 1, start=50))
    write_all(cache, [b])
    pb = cache.manager.pages(b)
    cache.detach(a)
    cache.detach(b)  # cached: a's two full pages (older), then b's
    c = cache.attach(prompt(4 * P + 1, start=900))  # needs 5 pages: 2 free + 3 evicted
    assert cache.stats()["evictions"] == 3
    # a's tail page went first, then a's head, then b's tail: b's head survives.
    survivors = set(cache.manager.index.page_of.values())
    assert survivors == {pb[0]}
    cache.detach(c)
    assert cache.num_cached_tokens(cache.attach(prompt(P + 1, start=50))) == P


def test_refused_attach_changes_nothing_but_the_refusal_counter():
    cache = make_cache(num_pages=4)
    a = cache.attach(prompt(3 * P))
    before = cache.stats()
    assert not cache.can_attach(prompt(2 * P))
    with pytest.raises(OutOfPages):
        cache.attach(prompt(2 * P))
    after = cache.stats()
    assert after.pop("refusals") == before.pop("refusals") + 1
    assert after == before
    assert len(cache.manager.seqs) == 1 and cache.num_tokens(a) == 3 * P
    cache.check_invariants()


def test_pinned_prefix_is_never_evicted():
    cache = make_cache(num_pages=4)
    system = prompt(2 * P, start=0)
    a = cache.attach(system + [1])
    write_all(cache, [a])
    assert cache.pin_prefix(system) == 2
    cache.detach(a)
    assert cache.stats()["pages_evictable"] == 0
    assert not cache.can_attach(prompt(3 * P, start=500))  # only 2 free pages; pins cannot go
    with pytest.raises(OutOfPages):
        cache.attach(prompt(3 * P, start=500))
    assert cache.num_cached_tokens(cache.attach(system + [2])) == 2 * P
    assert cache.unpin_prefix(system) == 2


def test_pool_grows_before_evicting():
    cache = make_cache(num_pages=4, max_num_pages=10)
    a = cache.attach(prompt(2 * P + 1))
    write_all(cache, [a])
    cache.detach(a)
    cache.attach(prompt(3 * P, start=700))
    assert cache.num_pages > 4 and cache.stats()["evictions"] == 0
    assert cache.pool.shape[1] == cache.num_pages
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 2 * P
    cache.check_invariants()


# ---------------------------------------------------------------- copy-on-write and fork
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fork_then_append_copies_the_shared_page_once(device, dtype):
    cache = make_cache(dtype=dtype, device=device)
    a = cache.attach(prompt(P + 2))
    k, v = write_all(cache, [a])
    children = [cache.fork(a) for _ in range(3)]
    last = cache.manager.pages(a)[-1]
    assert cache.manager.allocator.refcount[last] == 4
    cache.append_batch(children, [11, 12, 13])
    assert cache.stats()["cow_copies"] == 3  # the last writer of the shared page would be the parent
    kc, vc = write_all(cache, children, seed=5)
    ka, va = cache.get(a)
    assert torch.equal(ka.cpu(), k) and torch.equal(va.cpu(), v)  # the shared page was never written
    for i, child in enumerate(children):
        kch, vch = cache.get(child)
        assert torch.equal(kch[:, :P + 2].cpu(), k)
        assert torch.equal(kch[:, P + 2].cpu(), kc[:, i])
    cache.append(a, [99])  # now the parent owns its page alone: no copy
    assert cache.stats()["cow_copies"] == 3
    cache.check_invariants()


def test_parent_and_fork_appended_together_copy_the_shared_page_once():
    cache = make_cache()
    a = cache.attach(prompt(P + 1))
    k, _ = write_all(cache, [a])
    b = cache.fork(a)
    free_before = cache.stats()["pages_free"]
    cache.append_batch([a, b], [1, 2])
    assert cache.stats()["cow_copies"] == 1
    assert cache.stats()["pages_free"] == free_before - 1
    write_all(cache, [a, b], seed=9)
    assert torch.equal(cache.get(a)[0][:, :P + 1], k) and torch.equal(cache.get(b)[0][:, :P + 1], k)
    cache.check_invariants()


def test_fork_with_unwritten_tokens_is_refused():
    cache = make_cache()
    a = cache.attach(prompt(3))
    with pytest.raises(ValueError, match="write them before forking"):
        cache.fork(a)


# ---------------------------------------------------------------- compaction
@pytest.mark.parametrize("order", ["sequence", "lowest"])
def test_defragment_keeps_kv_bit_identical_and_prefix_hits(order):
    cache = make_cache(num_pages=24)
    seqs = [cache.attach(prompt(2 * P + i, start=10 * i)) for i in range(6)]
    write_all(cache, seqs)
    for s in seqs[::2]:
        cache.detach(s)
    keep = seqs[1::2]
    cache.append_batch(keep, [1, 2, 3])
    write_all(cache, keep, seed=3)
    before = {s: cache.get(s) for s in keep}
    report = cache.defragment(order=order)
    assert report.pages_moved > 0 and report.fragmentation_after == 0.0
    for s, (k, v) in before.items():
        k2, v2 = cache.get(s)
        assert torch.equal(k, k2) and torch.equal(v, v2)
    if order == "sequence":
        for s in keep:
            pages = cache.manager.pages(s)
            assert pages == list(range(pages[0], pages[0] + len(pages)))
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P, start=0))) == P  # a detached prefix still hits
    cache.check_invariants()


def test_shrink_really_returns_memory_and_evicts_only_when_needed():
    cache = make_cache(num_pages=32)
    seqs = [cache.attach(prompt(2 * P + 1, start=20 * i)) for i in range(8)]
    write_all(cache, seqs)
    for s in seqs[:4]:
        cache.detach(s)  # 8 cached pages
    live_pages = cache.stats()["pages_used"] + cache.stats()["pages_cached"]
    report = cache.defragment(shrink=True)
    assert report.evicted == 0 and cache.num_pages == live_pages
    assert report.pool_bytes_after == live_pages * cache.config.page_bytes < report.pool_bytes_before
    report = cache.defragment(shrink=live_pages - 3)
    assert report.evicted == 3 and cache.num_pages == live_pages - 3
    with pytest.raises(OutOfPages):
        cache.defragment(shrink=2)
    for s in seqs[4:]:
        assert cache.num_written(s) == 2 * P + 1
    cache.check_invariants()


def test_automatic_defragmentation_by_threshold():
    cache = make_cache(num_pages=16, defrag_threshold=0.3)
    seqs = [cache.attach(prompt(P, start=10 * i)) for i in range(8)]
    for s in seqs[:6]:
        cache.detach(s)
    assert cache.manager.fragmentation() <= 0.3
    assert cache.stats()["compactions"] >= 1


# ---------------------------------------------------------------- tables
def test_block_table_and_csr_describe_the_same_pages():
    cache = make_cache()
    seqs = [cache.attach(prompt(n)) for n in (1, P, P + 1, 3 * P - 1)]
    table = cache.block_table(seqs)
    assert table.dtype == torch.int32 and table.shape == (4, 3)
    indptr, indices, last = cache.page_table_csr(seqs)
    assert indptr.tolist() == [0, 1, 2, 4, 7]
    assert last.tolist() == [1, P, 1, P - 1]
    for i, s in enumerate(seqs):
        row = table[i].tolist()
        pages = indices[indptr[i]:indptr[i + 1]].tolist()
        assert row[:len(pages)] == pages == cache.manager.pages(s)
        assert all(x == BLOCK_TABLE_PAD for x in row[len(pages):])
    assert cache.seq_lens(seqs).tolist() == [1, P, P + 1, 3 * P - 1]


def test_slot_mapping_lists_pending_tokens_in_batch_then_position_order():
    cache = make_cache()
    a, b = cache.attach(prompt(3)), cache.attach(prompt(2, start=7))
    slots = cache.slot_mapping([b, a]).tolist()
    pa, pb = cache.manager.pages(a), cache.manager.pages(b)
    assert slots == [pb[0] * P, pb[0] * P + 1, pa[0] * P, pa[0] * P + 1, pa[0] * P + 2]


def test_append_batch_reserves_one_slot_per_sequence():
    cache = make_cache(num_pages=64)
    seqs = [cache.attach(prompt(P - 1 + i % 2, start=i)) for i in range(10)]
    write_all(cache, seqs)
    cache.append_batch(seqs, list(range(10)))
    assert cache.slot_mapping(seqs).numel() == 10
    assert [cache.num_tokens(s) for s in seqs] == [P + i % 2 for i in range(10)]


# ---------------------------------------------------------------- bad input
def test_unknown_and_detached_sequences_are_named():
    cache = make_cache()
    a = cache.attach(prompt(3))
    cache.detach(a)
    for call in (lambda: cache.detach(a), lambda: cache.append(a, [1]), lambda: cache.get(a),
                 lambda: cache.fork(12345), lambda: cache.slot_mapping([a])):
        with pytest.raises(UnknownSequence, match="not attached"):
            call()


@pytest.mark.parametrize("bad", [[], [-1], [2**31], [1.5], [[1, 2]], "abc", [True]])
def test_invalid_token_ids_are_refused_before_any_change(bad):
    cache = make_cache()
    a = cache.attach(prompt(3))
    before = cache.stats()
    with pytest.raises(InvalidTokenIds):
        cache.attach(bad)
    with pytest.raises(InvalidTokenIds):
        cache.append(a, bad if bad != [] else [[]])
    assert cache.stats() == before and cache.num_tokens(a) == 3


def test_append_batch_is_all_or_nothing():
    cache = make_cache(max_context_len=2 * P)
    a, b = cache.attach(prompt(3)), cache.attach(prompt(2 * P))
    with pytest.raises(ContextWindowExceeded):
        cache.append_batch([a, b], [1, 2])
    assert cache.num_tokens(a) == 3 and cache.num_tokens(b) == 2 * P
    with pytest.raises(ContextWindowExceeded):
        cache.attach(prompt(2 * P + 1))


def test_writes_of_the_wrong_shape_dtype_or_slot_change_nothing():
    cache = make_cache()
    a = cache.attach(prompt(3))
    slots = cache.slot_mapping([a])
    with pytest.raises(KernelInputError):
        cache.write(0, slots, torch.randn(3, 2, 7), torch.randn(3, 2, 7))
    with pytest.raises(KernelInputError):
        cache.write(0, slots, torch.randn(3, 2, 8, dtype=torch.float64), torch.randn(3, 2, 8, dtype=torch.float64))
    assert not cache.manager.slot_layers.any()
    kv = torch.randn(3, 2, 8)
    cache.write(0, slots, kv, kv)
    with pytest.raises(ValueError, match="already wrote"):
        cache.write(0, slots, kv, kv)
    with pytest.raises(ValueError, match="not reserved"):
        cache.write(1, slots + 1, kv, kv)  # the slot past the reservation
    with pytest.raises(ValueError, match="layer 5"):
        cache.write(5, slots, kv, kv)


@pytest.mark.parametrize("layers", [3, 70])
def test_a_layer_written_twice_never_stands_in_for_a_missing_layer(layers):
    """Writes by layers 1, 0, 1 must not count as three layers: the slot stays pending, nothing is
    published, and the missing layer can still write."""
    cache = make_cache(layers=layers)
    a = cache.attach(prompt(2 * P + 1))
    slots = cache.slot_mapping([a])
    kv = torch.randn(slots.numel(), 2, 8)
    cache.write(1, slots, kv, kv)
    cache.write(0, slots, kv, kv)
    with pytest.raises(ValueError, match="already wrote"):
        cache.write(1, slots, kv, kv)
    for layer in range(2, layers - 1):
        cache.write(layer, slots, kv, kv)
    assert cache.num_written(a) == 0
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 0  # nothing published
    cache.write(layers - 1, slots, kv, kv)
    assert cache.num_written(a) == 2 * P + 1
    assert cache.num_cached_tokens(cache.attach(prompt(2 * P + 1))) == 2 * P


@pytest.mark.parametrize("kwargs", [dict(num_pages=0), dict(page_size=-1), dict(dtype=torch.int8),
                                    dict(device="tpu"), dict(max_num_pages=3, num_pages=4),
                                    dict(defrag_threshold=1.5), dict(backend="cuda")])
def test_configs_that_make_no_sense_are_refused(kwargs):
    args = dict(num_layers=1, num_kv_heads=1, head_dim=8) | kwargs
    with pytest.raises(ConfigError):
        KVCacheConfig(**args)


def test_stats_report_what_happened():
    cache = make_cache()
    a = cache.attach(prompt(2 * P + 1))
    write_all(cache, [a])
    cache.attach(prompt(2 * P + 1))
    s = cache.stats()
    assert s["prefix_query_tokens"] == 2 * (2 * P + 1)
    assert s["prefix_hit_tokens"] == 2 * P
    assert s["pages_used"] == 4 and s["pages_free"] == 12 and s["pages_cached"] == 0
    assert s["pool_bytes"] == 16 * cache.config.page_bytes
    assert np.isclose(s["prefix_hit_rate"], 2 * P / (2 * (2 * P + 1)))


def test_eviction_policy_is_pluggable():
    class MostRecentFirst:
        """Evicts the most recently released page first (the opposite of LRU)."""

        def __init__(self):
            self.pages = []

        def insert(self, page):
            self.pages.append(page)

        def remove(self, page):
            self.pages.remove(page)

        def victim(self):
            return self.pages.pop()

        def __len__(self):
            return len(self.pages)

        def __contains__(self, page):
            return page in self.pages

        def __iter__(self):
            return iter(list(self.pages))

    cache = make_cache(num_pages=5, eviction_policy=MostRecentFirst())
    a = cache.attach(prompt(2 * P + 1, start=0))
    write_all(cache, [a])
    head, tail = cache.manager.pages(a)[:2]
    cache.detach(a)  # released tail first, so the head is the most recent
    cache.attach(prompt(4 * P, start=500))  # 4 pages: 3 free + 1 evicted
    assert set(cache.manager.index.page_of.values()) == {tail}
    assert cache.stats()["evictions"] == 1
    cache.check_invariants()
