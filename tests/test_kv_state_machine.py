"""Property test: random attach / append / fork / write / detach / defragment / evict sequences keep
every invariant of the paged KV cache (docs/ARCHITECTURE.md, "Where each invariant lives"), and every
live sequence reads back exactly what was written."""

import functools
import hashlib

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds_torch.errors import ContextWindowExceeded, OutOfPages
from llmds_torch.kv import KVCacheConfig, PagedKVCache

LAYERS, HEADS, DIM, PAGE = 2, 1, 2, 4
PREFIXES = [[7, 7, 7, 7, 1, 2, 3, 4], [7, 7, 7, 7, 9, 9], [5, 6, 7, 8, 1, 2, 3, 4, 5]]


@functools.lru_cache(maxsize=None)
def kv_of(prefix: tuple[int, ...], dtype) -> torch.Tensor:
    """The K/V a model would compute for the last token of ``prefix``: [LAYERS, 2, HEADS, DIM].
    A pure function of the prefix, so sequences sharing a prefix write identical KV."""
    seed = int.from_bytes(hashlib.sha256(repr(prefix).encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LAYERS, 2, HEADS, DIM, generator=g).to(dtype)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dtype = torch.float16
        self.cache = PagedKVCache(KVCacheConfig(LAYERS, HEADS, DIM, page_size=PAGE, num_pages=14,
                                                max_num_pages=18, dtype=self.dtype, max_context_len=40))
        self.live: list[int] = []

    def _write_pending(self, seq_ids):
        slots = self.cache.slot_mapping(seq_ids)
        if slots.numel() == 0:
            return
        values = []
        for s in seq_ids:
            tokens = self.cache.token_ids(s)
            for pos in range(self.cache.num_written(s), len(tokens)):
                values.append(kv_of(tuple(tokens[:pos + 1]), self.dtype))
        kv = torch.stack(values)  # [T, LAYERS, 2, HEADS, DIM]
        for layer in reversed(range(LAYERS)):  # any layer order is allowed
            self.cache.write(layer, slots, kv[:, layer, 0].contiguous(), kv[:, layer, 1].contiguous())

    @rule(which=st.integers(0, len(PREFIXES) - 1), tail=st.lists(st.integers(0, 30), max_size=6),
          salt=st.sampled_from([None, None, "tenant-b"]), write=st.booleans())
    def attach(self, which, tail, salt, write):
        prompt = PREFIXES[which] + tail
        stats_before = self.cache.stats()
        try:
            seq = self.cache.attach(prompt, salt=salt)
        except OutOfPages:
            after = self.cache.stats()
            assert after["refusals"] == stats_before["refusals"] + 1
            assert {k: v for k, v in after.items() if k != "refusals"} == \
                {k: v for k, v in stats_before.items() if k != "refusals"}
            return
        cached = self.cache.num_cached_tokens(seq)
        assert cached % PAGE == 0 and cached <= len(prompt) - 1
        self.live.append(seq)
        if write:
            self._write_pending([seq])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def write(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self._write_pending([seq])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def write_layers_out_of_order(self, data):
        """Layers in a random order, with a repeated layer refused on the way: the sequence must not
        advance (nor publish) until the last missing layer wrote."""
        seq = data.draw(st.sampled_from(self.live))
        slots = self.cache.slot_mapping([seq])
        if slots.numel() == 0:
            return
        tokens = self.cache.token_ids(seq)
        start = self.cache.num_written(seq)
        kv = torch.stack([kv_of(tuple(tokens[:p + 1]), self.dtype) for p in range(start, len(tokens))])
        order = data.draw(st.permutations(range(LAYERS)))
        for i, layer in enumerate(order):
            self.cache.write(layer, slots, kv[:, layer, 0].contiguous(), kv[:, layer, 1].contiguous())
            if i < LAYERS - 1:
                assert self.cache.num_written(seq) == start
                with pytest.raises(ValueError, match="already wrote"):
                    self.cache.write(layer, slots, kv[:, layer, 0].contiguous(), kv[:, layer, 1].contiguous())
        assert self.cache.num_written(seq) == len(tokens)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), tokens=st.lists(st.integers(0, 30), min_size=1, max_size=5))
    def append(self, data, tokens):
        seq = data.draw(st.sampled_from(self.live))
        try:
            self.cache.append(seq, tokens)
        except (OutOfPages, ContextWindowExceeded):
            return

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def decode_step(self, data):
        """Append one token to several sequences at once, then write them all."""
        seqs = data.draw(st.lists(st.sampled_from(self.live), min_size=1, max_size=4, unique=True))
        tokens = data.draw(st.lists(st.integers(0, 30), min_size=len(seqs), max_size=len(seqs)))
        self._write_pending(seqs)
        try:
            self.cache.append_batch(seqs, tokens)
        except (OutOfPages, ContextWindowExceeded):
            return
        self._write_pending(seqs)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self._write_pending([seq])
        self.live.append(self.cache.fork(seq))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def detach(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.cache.detach(seq)
        self.live.remove(seq)

    @rule(order=st.sampled_from(["sequence", "lowest"]), shrink=st.booleans())
    def defragment(self, order, shrink):
        before = {s: self.cache.get(s) for s in self.live}
        self.cache.defragment(order=order, shrink=shrink)
        for s, (k, v) in before.items():
            k2, v2 = self.cache.get(s)
            assert torch.equal(k, k2) and torch.equal(v, v2)
        if shrink:
            self.cache.grow(14 if self.cache.num_pages < 14 else self.cache.num_pages)

    @rule(n=st.integers(1, 3))
    def evict(self, n):
        """Memory pressure: evict cached pages through the allocator, as a full pool would."""
        n = min(n, self.cache.manager.allocator.num_evictable)
        self.cache.manager.allocator.evict(n)

    @invariant()
    def bookkeeping_is_consistent(self):
        self.cache.check_invariants()

    @invariant()
    def every_sequence_reads_back_what_was_written(self):
        for s in self.live:
            tokens = self.cache.token_ids(s)
            n = self.cache.num_written(s)
            k, v = self.cache.get(s)
            assert k.shape == (LAYERS, n, HEADS, DIM)
            if n:
                expected = torch.stack([kv_of(tuple(tokens[:p + 1]), self.dtype) for p in range(n)])
                assert torch.equal(k, expected[:, :, 0].transpose(0, 1))
                assert torch.equal(v, expected[:, :, 1].transpose(0, 1))


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestCacheMachine = CacheMachine.TestCase
