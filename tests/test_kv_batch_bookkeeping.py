"""The batch bookkeeping pieces of the block manager against plain-Python references: the compiled
page release, block-table slot runs and page pushes, batch token validation, the remembered cached
run of prefix matching, and publishing many pages at once."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.errors import InvalidTokenIds
from llmds_torch.kv import BlockManager
from llmds_torch.kv.block_tables import BlockTables
from llmds_torch.kv.page_release import release_buffer, release_pages
from llmds_torch.kv.prefix_index import PrefixIndex
from llmds_torch.kv.prefix_match import PrefixMatcher
from llmds_torch.kv.sequence import le_bytes, token_array, validate_token_batch, validate_token_ids

FREE, CACHED = 0, 2


def release_reference(pages, refcount, state, published, pins):
    """The release rule one page at a time: (pages freed, pages cached and unpinned), in order."""
    freed, evictable = [], []
    for page in pages:
        refcount[page] -= 1
        if refcount[page] == 0:
            if published[page]:
                state[page] = CACHED
                if pins[page] == 0:
                    evictable.append(page)
            else:
                state[page] = FREE
                freed.append(page)
    return freed, evictable


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_compiled_release_matches_the_page_by_page_rule(data):
    num_pages = data.draw(st.integers(1, 40))
    pages = data.draw(st.lists(st.integers(0, num_pages - 1), unique=True, max_size=num_pages))
    refcount = np.array(data.draw(st.lists(st.integers(1, 3), min_size=num_pages, max_size=num_pages)), np.int32)
    published = np.array(data.draw(st.lists(st.booleans(), min_size=num_pages, max_size=num_pages)))
    pins = np.array(data.draw(st.lists(st.integers(0, 1), min_size=num_pages, max_size=num_pages)), np.int32)
    state = np.ones(num_pages, np.int8)
    want_refcount, want_state = refcount.copy(), state.copy()
    freed, evictable = release_reference(pages, want_refcount, want_state, published, pins)
    as_view = data.draw(st.booleans())  # a reversed int32 block-table row, or an int64 array
    arr = np.array(pages[::-1], np.int32)[::-1] if as_view else np.array(pages, np.int64)
    out = release_buffer(len(pages), None)
    num_free, num_cached, num_evictable = release_pages(arr, refcount, state, published, pins, FREE, CACHED, out)
    n = len(pages)
    assert out[:num_free].tolist() == freed
    assert out[n:n + num_evictable].tolist() == evictable
    assert num_cached == int(np.count_nonzero((want_state == CACHED)))
    assert np.array_equal(refcount, want_refcount) and np.array_equal(state, want_state)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_slot_runs_and_page_pushes_match_a_position_by_position_reference(data):
    page_size = data.draw(st.sampled_from([1, 4, 16]))
    tables = BlockTables(rows=2, width=2)
    rows_pages = data.draw(st.lists(st.lists(st.integers(0, 500), min_size=1, max_size=9), min_size=1, max_size=5))
    rows = [tables.new_row(pages, 0, 0) for pages in rows_pages]
    spans = []
    for pages in rows_pages:
        start = data.draw(st.integers(0, len(pages) * page_size))
        spans.append((start, data.draw(st.integers(start, len(pages) * page_size))))

    def reference(pages, start, end):
        return [pages[p // page_size] * page_size + p % page_size for p in range(start, end)]

    for row, pages, (start, end) in zip(rows, rows_pages, spans):
        assert tables.run_slots(row, start, end, page_size).tolist() == reference(pages, start, end)
    starts = np.array([s for s, _ in spans], np.int64)
    ends = np.array([e for _, e in spans], np.int64)
    want = [slot for pages, (s, e) in zip(rows_pages, spans) for slot in reference(pages, s, e)]
    assert tables.slots(np.array(rows, np.int64), starts, ends, page_size).tolist() == want
    extra = data.draw(st.lists(st.integers(0, 500), min_size=len(rows), max_size=len(rows)))
    tables.push(np.array(rows, np.int64), np.array(extra, np.int32))
    for row, pages, page in zip(rows, rows_pages, extra):
        assert tables.table[row, :tables.num_pages[row]].tolist() == pages + [page]
        assert (tables.table[row, tables.num_pages[row]:] == -1).all()


def generic_batch(token_ids):
    """What every form reduces to: each sequence's tokens validated one by one."""
    lists = [validate_token_ids([t] if isinstance(t, (int, np.integer)) and not isinstance(t, bool) else t)
             for t in token_ids]
    counts = [len(t) for t in lists]
    return [t for tokens in lists for t in tokens], None if max(counts, default=1) == 1 else counts


@pytest.mark.parametrize("batch", [
    [3, 0, 2**31 - 1], [[3], [0], [7]], [[1, 2], [3]], ([4], (5,)), [np.int64(3), 4], [[np.int32(3)], [4]],
    [], [5],
])
def test_every_batch_form_gives_the_generic_answer(batch):
    flat, counts = validate_token_batch(batch)
    want_flat, want_counts = generic_batch(batch)
    assert flat == want_flat and all(type(t) is int for t in flat)
    assert (None if counts is None or max(counts) == 1 else counts) == want_counts  # one each: no counts


@pytest.mark.parametrize("batch", [
    [-1, 2], [2**31, 1], [[2**31]], [[-5], [1]], [[True], [1]], [True, 1], [1.0, 2], [[1.5]], [[]], [[1], []],
    ["a"], [[1], "b"],
])
def test_bad_batches_are_refused_with_the_named_error(batch):
    with pytest.raises(InvalidTokenIds):
        validate_token_batch(batch)


def test_tensor_and_array_batches_give_the_same_tokens():
    tokens = [5, 0, 2**31 - 1]
    assert validate_token_batch(np.array(tokens)) == (tokens, None)
    assert validate_token_batch(torch.tensor(tokens)) == (tokens, None)
    assert validate_token_batch(np.array(tokens)[:, None]) == (tokens, [1, 1, 1])


def test_token_arrays_round_trip_through_little_endian_bytes():
    tokens = [0, 1, 2**31 - 1, 65536]
    data = np.asarray(tokens, dtype="<i4").tobytes()
    assert token_array(data).tolist() == tokens and le_bytes(token_array(data)) == data


def fresh_match(manager, prompt):
    """The prefix match a matcher without any remembered run finds, over the same index."""
    m = manager.prefix
    fresh = PrefixMatcher(m.page_size, m.cache_salt, m.hash_fn, m.verify_tokens)
    fresh.index = manager.index
    token_bytes = np.asarray(prompt, dtype="<i4").tobytes()
    return fresh.match(token_bytes, fresh.salt_block(None, None))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_remembered_cached_run_matches_a_fresh_walk(data):
    page = 2
    manager = BlockManager(24, page, salt=b"s")
    system = [1, 2, 3, 4, 5, 6]
    for _ in range(data.draw(st.integers(1, 16))):
        action = data.draw(st.sampled_from(["attach", "detach", "evict"]))
        if action == "attach":
            prompt = data.draw(st.sampled_from([system, system[:4], [1, 2, 9, 9], []])) + \
                data.draw(st.lists(st.integers(0, 3), max_size=5))
            if prompt and manager.can_attach(prompt):
                hits, keys, _ = manager.prefix.match(np.asarray(prompt, dtype="<i4").tobytes(),
                                                     manager.prefix.salt_block(None, None))
                assert (hits, keys) == fresh_match(manager, prompt)[:2]
                manager.mark_written(manager.attach(prompt))
        elif action == "detach" and manager.seqs:
            manager.detach(data.draw(st.sampled_from(sorted(manager.seqs))))
        elif action == "evict" and manager.allocator.num_evictable:
            manager.allocator.evict(data.draw(st.integers(1, manager.allocator.num_evictable)))
        manager.check_invariants()


def test_remembered_cached_run_is_dropped_once_its_pages_are_evicted():
    manager = BlockManager(24, 2, salt=b"s")
    system = [1, 2, 3, 4, 5, 6, 7]
    first = manager.attach(system)
    manager.mark_written(first)
    second = manager.attach(system)  # walks the three cached pages and remembers them
    assert manager.num_cached_tokens(second) == 6
    manager.detach(first)
    manager.detach(second)
    manager.allocator.evict(manager.allocator.num_evictable)
    hits, _, _ = manager.prefix.match(np.asarray(system, dtype="<i4").tobytes(), manager.prefix.salt_block(None, None))
    assert hits == fresh_match(manager, system)[0] == []
    assert manager.num_cached_tokens(manager.attach(system)) == 0
    manager.check_invariants()


def test_publishing_many_pages_matches_publishing_them_one_by_one():
    def collide(data):  # two different pages share every key
        return b"k" + bytes([len(data) % 2])

    keys = [collide(b"a"), collide(b"bb"), collide(b"a"), b"z"]
    pages, chunks = [10, 11, 12, 13], [b"p0", b"p1", b"p2", b"p3"]
    parents, salts = [b"", keys[0], keys[1], keys[2]], [b"s"] * 4
    one_by_one, many = PrefixIndex(), PrefixIndex()
    indexed = [p for k, p, c, prev, s in zip(keys, pages, chunks, parents, salts) if one_by_one.publish(k, p, c, prev, s)]
    assert many.publish_many(keys, pages, chunks, parents, salts) == indexed == [10, 11, 13]
    fresh_keys = [b"x", b"y"]
    assert many.publish_many(fresh_keys, [20, 21], [b"c", b"d"], [b"z", b"x"], [b"s", b"s"]) == [20, 21]
    for k, p, c, prev, s in zip(fresh_keys, [20, 21], [b"c", b"d"], [b"z", b"x"], [b"s", b"s"]):
        one_by_one.publish(k, p, c, prev, s)
    for name in ("page_of", "key_of", "tokens_of", "child_of", "_child_key"):
        assert getattr(many, name) == getattr(one_by_one, name)
