"""The host tier: evicted prefix pages kept in host memory and brought back on a prefix hit, with
exact outputs (the built-in decoder through the engine against a no-cache recompute and against the
tier off), named refusals, rollback inside transactions, and a state machine over device <-> host moves."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, precondition, rule

from llmds_torch.errors import ConfigError
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams
from tests.test_kv_state_machine import DIM, HEADS, LAYERS, PAGE, CacheMachine, kv_of

CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=128)


def _small_cache(num_pages=4, host_pages=8, **kw):
    return PagedKVCache(KVCacheConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, page_size=PAGE,
                                      num_pages=num_pages, host_pages=host_pages, **kw))


def _prefill(cache, prompt):
    """Attach ``prompt`` and write the KV of its uncached tokens (``kv_of`` of each prefix)."""
    seq = cache.attach(prompt)
    slots = cache.slot_mapping([seq])
    start = cache.num_written(seq)
    kv = torch.stack([kv_of(tuple(prompt[:p + 1]), cache.config.dtype) for p in range(start, len(prompt))]).to(cache.device)
    for layer in range(LAYERS):
        cache.write(layer, slots, kv[:, layer, 0].contiguous(), kv[:, layer, 1].contiguous())
    return seq


def _expected_k(prompt, dtype=torch.float32):
    return torch.stack([kv_of(tuple(prompt[:p + 1]), dtype) for p in range(len(prompt))])[:, :, 0].transpose(0, 1)


def test_off_by_default_and_bad_sizes_refused():
    cache = _small_cache(host_pages=0)
    assert cache.host is None and "host_hits" not in cache.stats()
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="host_pages"):
            KVCacheConfig(num_layers=1, num_kv_heads=1, head_dim=2, host_pages=bad)


def test_evicted_prefix_comes_back_from_the_host_with_its_kv():
    cache = _small_cache(num_pages=4, host_pages=8)
    first = list(range(1, 10))  # 2 full pages + 1 token
    cache.detach(_prefill(cache, first))
    second = list(range(50, 59))
    cache.detach(_prefill(cache, second))  # needs 3 pages of 4: evicts the first prompt's pages
    stats = cache.stats()
    assert stats["evictions"] >= 1 and stats["host_saves"] == stats["evictions"]
    assert stats["bytes_to_host"] == stats["host_saves"] * stats["page_bytes"]
    seq = cache.attach(first)
    assert cache.num_cached_tokens(seq) == 8
    k, _ = cache.get(seq)
    assert torch.equal(k, _expected_k(first)[:, :8])
    stats = cache.stats()
    assert stats["host_hit_tokens"] >= 8 - 4 * (stats["pages_cached"] > 0) and stats["bytes_to_device"] > 0
    cache.check_invariants()


def test_without_the_tier_the_same_workload_misses():
    for host_pages, expected in ((0, 0), (8, 8)):
        cache = _small_cache(num_pages=3, host_pages=host_pages)
        first = list(range(1, 10))
        cache.detach(_prefill(cache, first))
        cache.detach(_prefill(cache, list(range(50, 59))))
        assert cache.num_cached_tokens(cache.attach(first)) == expected


def test_host_pool_is_bounded_and_drops_least_recently_used():
    cache = _small_cache(num_pages=3, host_pages=2)
    prompts = [[100 * t + i for i in range(5)] for t in range(1, 6)]  # one full page each
    for prompt in prompts:
        cache.detach(_prefill(cache, prompt))
    stats = cache.stats()
    assert stats["host_pages_used"] == 2 and stats["host_evictions"] == stats["host_saves"] - 2
    assert cache.num_cached_tokens(cache.attach(prompts[0])) == 0  # dropped from both tiers
    cache.check_invariants()


def test_refused_attach_promotes_nothing():
    cache = _small_cache(num_pages=4, host_pages=8)
    first = list(range(1, 10))
    cache.detach(_prefill(cache, first))
    cache.detach(_prefill(cache, list(range(50, 59))))
    hog = _prefill(cache, list(range(200, 212)))  # holds 3 of 4 pages
    before = cache.stats()
    assert not cache.can_attach(first)
    with pytest.raises(Exception, match="attach needs"):
        cache.attach(first)
    after = cache.stats()
    assert {k: v for k, v in after.items() if k != "refusals"} == {k: v for k, v in before.items() if k != "refusals"}
    cache.detach(hog)
    cache.check_invariants()


def test_promotion_rolled_back_with_its_transaction():
    cache = _small_cache(num_pages=6, host_pages=8)
    first = list(range(1, 10))
    cache.detach(_prefill(cache, first))
    for t in range(2):
        cache.detach(_prefill(cache, list(range(50 + 20 * t, 59 + 20 * t))))
    before = cache.stats()
    with pytest.raises(RuntimeError, match="boom"):
        with cache.transaction():
            assert cache.num_cached_tokens(cache.attach(first)) == 8
            raise RuntimeError("boom")
    cache.check_invariants()
    assert not cache.host.to_load
    after = cache.stats()
    assert {k: v for k, v in after.items() if "evict" not in k and not k.startswith("pages_") and k != "fragmentation"} == \
        {k: v for k, v in before.items() if "evict" not in k and not k.startswith("pages_") and k != "fragmentation"}
    seq = _prefill(cache, first)  # the host still holds the pages: hit again, KV exact
    assert cache.num_cached_tokens(seq) == 8
    k, _ = cache.get(seq)
    assert torch.equal(k, _expected_k(first))


def test_compaction_and_shrink_keep_host_copies_exact():
    cache = _small_cache(num_pages=6, host_pages=8, max_num_pages=8)
    prompts = [[100 * t + i for i in range(9)] for t in range(1, 5)]
    for prompt in prompts:
        cache.detach(_prefill(cache, prompt))
    cache.defragment(order="sequence", shrink=2)  # evicts cached pages, then moves the rest
    cache.grow(6)
    for prompt in prompts:
        seq = cache.attach(prompt)
        assert cache.num_cached_tokens(seq) == 8
        k, _ = cache.get(seq)
        assert torch.equal(k, _expected_k(prompt)[:, :8])
        cache.detach(seq)
    cache.check_invariants()


# ---------------------------------------------------------------------------- the engine, exact

@pytest.fixture(scope="module")
def model():
    return LlamaModel(CFG, seed=3)


def _greedy_no_cache(model, prompt, max_new):
    out = []
    while len(out) < max_new:
        out.append(int(model.forward_full(prompt + out)[-1].argmax()))
    return out


def _run_tenants(model, host_pages, prompts):
    """Every prompt through the engine (greedy, fp32, logits kept) on a 16-page pool."""
    cache = PagedKVCache(KVCacheConfig(num_layers=CFG.num_layers, num_kv_heads=CFG.num_kv_heads,
                                       head_dim=CFG.head_dim, page_size=4, num_pages=16, dtype=torch.float32,
                                       host_pages=host_pages))
    cache.pool.fill_(float("nan"))  # an unwritten slot read would poison the logits
    engine = GenerationEngine(model, cache, EngineConfig(max_batch_seqs=2, record_logits=True))
    results = []
    for start in range(0, len(prompts), 2):
        results += engine.generate(prompts[start:start + 2], SamplingParams(max_new_tokens=3))
    return results, engine.stats()


def test_prefix_working_set_four_times_the_device_pool_keeps_its_hits(model):
    g = torch.Generator().manual_seed(11)
    systems = [torch.randint(0, CFG.vocab_size, (16,), generator=g).tolist() for _ in range(16)]  # 64 pages
    prompts = [system + torch.randint(0, CFG.vocab_size, (3,), generator=g).tolist()
               for _ in range(2) for system in systems]
    on, on_stats = _run_tenants(model, 80, prompts)
    off, off_stats = _run_tenants(model, 0, prompts)
    second_round_hits = sum(r.num_cached_prompt_tokens for r in on[16:])
    assert second_round_hits == 16 * 16  # every system prompt hits in full
    assert sum(r.num_cached_prompt_tokens for r in off[16:]) < second_round_hits // 4
    assert on_stats["cache_host_hit_tokens"] >= 16 * 16 - 16 * 4  # the device pool holds at most 16 pages
    for r_on, r_off in zip(on, off):
        assert r_on.prompt == r_off.prompt
        assert r_on.outputs[0].token_ids == r_off.outputs[0].token_ids
        torch.testing.assert_close(r_on.outputs[0].logits, r_off.outputs[0].logits, rtol=0, atol=1e-5)
    for r in on[16:]:
        assert r.outputs[0].token_ids == _greedy_no_cache(model, r.prompt, 3)
        full = model.forward_full(r.prompt + r.outputs[0].token_ids)[len(r.prompt) - 1:-1]
        torch.testing.assert_close(r.outputs[0].logits, full, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- state machine

class HostTierMachine(CacheMachine):
    """The cache state machine on a device pool too small for its prefixes, with a host tier half
    its size: pages move device -> host on every eviction and back on prefix hits, and every live
    sequence still reads back exactly what was written (the inherited invariant)."""

    def __init__(self):
        super().__init__()
        self.cache = PagedKVCache(KVCacheConfig(LAYERS, HEADS, DIM, page_size=PAGE, num_pages=14,
                                                max_num_pages=18, dtype=self.dtype, max_context_len=40,
                                                host_pages=7))
        self.written_prompts: list[list[int]] = []

    def _write_pending(self, seq_ids):
        super()._write_pending(seq_ids)
        for s in seq_ids:
            if self.cache.num_written(s) >= PAGE:
                self.written_prompts.append(self.cache.token_ids(s))

    @precondition(lambda self: self.written_prompts)
    @rule(data=st.data(), evict_all=st.booleans(), release_all=st.booleans())
    def reattach_after_pressure(self, data, evict_all, release_all):
        """Optionally detach every sequence, evict (all or some) cached device pages, then attach a
        prompt written before: it hits every leading full page either tier still holds (as far as
        the pool has room), and reads back its KV (the inherited invariant)."""
        prompt = data.draw(st.sampled_from(self.written_prompts))
        if release_all:
            for seq in self.live:
                self.cache.detach(seq)
            self.live.clear()
        allocator = self.cache.manager.allocator
        allocator.evict(allocator.num_evictable if evict_all else min(2, allocator.num_evictable))
        self.cache._flush_host()  # what attach does first: the pages just evicted reach the host
        m, host = self.cache.manager, self.cache.host
        _, token_bytes = m._prompt(prompt)
        hits, keys, _ = m.prefix.match(token_bytes, m.prefix.salt_block(None, None))
        usable, on_host = (len(prompt) - 1) // PAGE, 0
        while len(hits) + on_host < usable and keys[len(hits) + on_host] in host.index:
            on_host += 1
        if not self.cache.can_attach(prompt):
            return
        a = m.allocator
        protected = sum(1 for p in hits if a.state[p] == 2 and a.pins[p] == 0)
        promoted = max(0, min(on_host, m.available_pages() - protected))
        low = high = len(hits) + promoted
        if promoted == on_host:  # the chain is whole again: pages published on the device after it hit too
            while high < usable and keys[high] in m.index.page_of:
                high += 1
        evicts = promoted > a.num_free + m.max_num_pages - m.num_pages  # may evict some of those pages
        seq = self.cache.attach(prompt)
        cached = self.cache.num_cached_tokens(seq) // PAGE
        assert (low <= cached <= high) if evicts else cached == high
        self.live.append(seq)

    @invariant()
    def host_counters_add_up(self):
        s = self.cache.stats()
        assert s["bytes_to_host"] == s["host_saves"] * s["page_bytes"]
        assert s["host_pages_used"] == s["host_saves"] - s["host_evictions"] <= 7

HostTierMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=30, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestHostTierMachine = HostTierMachine.TestCase


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pinned_host_pool_and_side_stream_load():
    cache = _small_cache(num_pages=4, host_pages=8, device="cuda")
    assert cache.host.pool.is_pinned() and cache.host.stream is not None
    first = list(range(1, 10))
    cache.detach(_prefill(cache, first))
    cache.detach(_prefill(cache, list(range(50, 59))))
    seq = cache.attach(first)
    assert cache.num_cached_tokens(seq) == 8
    k, _ = cache.get(seq)  # waits for the side stream's copy
    assert torch.equal(k.cpu(), _expected_k(first)[:, :8])
