"""Write tracking: counting layers against the issued slot mapping gives exactly the results of the
per-slot, per-layer bitmask (the ``check_writes`` debug mode), whatever mix of mappings, slices and
layer orders the writes use; chunked prefill copies no slot mapping back to the host."""

import random

import numpy as np
import pytest
import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from tests.test_kv_state_machine import CacheMachine

P, LAYERS = 4, 3


def make_cache(check_writes):
    return PagedKVCache(KVCacheConfig(LAYERS, 1, 2, page_size=P, num_pages=64, check_writes=check_writes,
                                      salt=b"s"))


def random_writes(cache, rng):
    """Attach, append and write through issued mappings, slices of them, copies and chunks; return
    every observable and each call's outcome."""
    seqs, outcomes = [], []
    for _ in range(40):
        op = rng.randrange(6)
        try:
            if op == 0 or not seqs:
                seqs.append(cache.attach([rng.randrange(5) for _ in range(rng.randrange(1, 11))]))
            elif op == 1:
                chosen = rng.sample(seqs, rng.randrange(1, len(seqs) + 1))
                cache.append_batch(chosen, [rng.randrange(5) for _ in chosen])
            else:
                chosen = rng.sample(seqs, rng.randrange(1, len(seqs) + 1))
                counts = None if rng.random() < 0.5 else [rng.randrange(0, 3) for _ in chosen]
                mapping = cache.slot_mapping(chosen, counts)
                for layer in [rng.randrange(LAYERS) for _ in range(rng.randrange(1, LAYERS + 2))]:
                    form = rng.randrange(4)
                    m = mapping if form == 0 else mapping[: rng.randrange(mapping.numel() + 1)] if form == 1 \
                        else mapping.clone() if form == 2 else mapping[1:]
                    kv = torch.full((m.numel(), 1, 2), float(layer))
                    cache.write(layer, m, kv, kv)
                    outcomes.append(("ok", layer, m.numel()))
        except ValueError as exc:
            outcomes.append(("refused", str(exc)))
    cache.check_invariants()
    state = {s: (cache.num_written(s), cache.token_ids(s), cache.manager.pages(s)) for s in seqs}
    return outcomes, state, cache.stats(), dict(cache.manager.index.page_of), cache.manager.slot_layers.copy()


@pytest.mark.parametrize("seed", range(30))
def test_counted_layers_equal_the_per_slot_bitmask(seed):
    fast = random_writes(make_cache(False), random.Random(seed))
    exact = random_writes(make_cache(True), random.Random(seed))
    assert fast[:4] == exact[:4]
    assert np.array_equal(fast[4], exact[4])


def test_a_layer_writing_twice_through_two_mappings_is_refused():
    cache = make_cache(False)
    a = cache.attach([1, 2, 3, 4, 5])
    first = cache.slot_mapping([a])
    kv = torch.ones(5, 1, 2)
    cache.write(0, first, kv, kv)
    second = cache.slot_mapping([a])
    with pytest.raises(ValueError, match="already wrote"):
        cache.write(0, second, kv, kv)
    for layer in (1, 2):
        cache.write(layer, second, kv, kv)
    assert cache.num_written(a) == 5


def test_chunked_prefill_copies_no_slot_mapping_to_the_host():
    cache = make_cache(False)
    a, b = cache.attach(list(range(10))), cache.attach(list(range(20, 27)))
    mapping = cache.slot_mapping([a, b], num_tokens=[4, 3])
    for layer in range(LAYERS):
        cache.write(layer, mapping, torch.ones(7, 1, 2), torch.ones(7, 1, 2))
    assert (cache.num_written(a), cache.num_written(b)) == (4, 3)
    head = cache.slot_mapping([a])[:2]  # a slice of an issued mapping: its host copy is a slice too
    for layer in range(LAYERS):
        cache.write(layer, head, torch.ones(2, 1, 2), torch.ones(2, 1, 2))
    assert cache.num_written(a) == 6 and cache._copied_slots is None
    with pytest.raises(ValueError, match="pending"):
        cache.slot_mapping([a], num_tokens=[5])


class CheckedCacheMachine(CacheMachine):
    """The cache's state machine again, with the per-slot bitmask debug mode."""

    def __init__(self):
        super().__init__()
        c = self.cache.config
        self.cache = PagedKVCache(KVCacheConfig(c.num_layers, c.num_kv_heads, c.head_dim, page_size=c.page_size,
                                                num_pages=c.num_pages, max_num_pages=c.max_num_pages, dtype=c.dtype,
                                                max_context_len=c.max_context_len, check_writes=True))


CheckedCacheMachine.TestCase.settings = CacheMachine.TestCase.settings.__class__(
    CacheMachine.TestCase.settings, max_examples=40)
TestCheckedCacheMachine = CheckedCacheMachine.TestCase


TOKEN_FORMS = {
    "ints": lambda t: t,
    "numpy ints": lambda t: [np.int64(x) for x in t],
    "one-element lists": lambda t: [[x] for x in t],
    "tuples": lambda t: [(x,) for x in t],
    "numpy": lambda t: np.array(t),
    "tensor": lambda t: torch.tensor(t),
    "numpy 2-D": lambda t: np.array(t)[:, None],
    "tensor 2-D": lambda t: torch.tensor(t)[:, None],
    "mixed": lambda t: [x if i % 3 == 0 else [x] if i % 3 == 1 else np.array([x]) for i, x in enumerate(t)],
}


@pytest.mark.parametrize("form", TOKEN_FORMS)
def test_every_token_form_appends_the_same(form):
    """A decode step in any input form leaves exactly the state a list of ints does."""
    results = []
    for convert in (TOKEN_FORMS["ints"], TOKEN_FORMS[form]):
        cache = make_cache(False)
        seqs = [cache.attach(list(range(i, i + 3 + i))) for i in range(6)]
        for step in range(6):  # crosses page boundaries
            cache.slot_mapping(seqs)
            for layer in range(LAYERS):
                m = cache.slot_mapping(seqs) if layer == 0 else m
                cache.write(layer, m, torch.ones(m.numel(), 1, 2), torch.ones(m.numel(), 1, 2))
            cache.append_batch(seqs, convert([7 * step + i for i in range(6)]))
        cache.check_invariants()
        results.append([(cache.token_ids(s), cache.manager.pages(s), cache.num_written(s)) for s in seqs])
        assert all(type(t) is int for s in seqs for t in cache.token_ids(s))
    assert results[0] == results[1]


@pytest.mark.parametrize("bad", [[1, -1], [[1], []], [[1], ["a"]], [1.5, 2], np.array([1.0, 2.0]), [True, 1],
                                 np.array([[1, 2]]).T[:, :0], [[1], [2**31]], torch.tensor([[1], [-3]])])
def test_bad_tokens_in_a_batch_change_nothing(bad):
    from llmds_torch.errors import InvalidTokenIds
    cache = make_cache(False)
    seqs = [cache.attach([1, 2, 3]), cache.attach([4, 5])]
    before = [(cache.token_ids(s), cache.manager.pages(s)) for s in seqs], cache.stats()
    with pytest.raises(InvalidTokenIds):
        cache.append_batch(seqs, bad)
    assert ([(cache.token_ids(s), cache.manager.pages(s)) for s in seqs], cache.stats()) == before
    cache.check_invariants()
