"""Segments: any sequence of adds, deletes and merges scores like an index built from the surviving documents."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmds_torch.retrieval._bm25_search import _rescaled_bound
from llmds_torch.retrieval.bm25 import METHODS, BM25Params
from llmds_torch.retrieval.errors import DuplicateIds, UnknownIds
from llmds_torch.retrieval.inverted_index import InvertedIndex
from llmds_torch.retrieval.inverted_index_segment import segments_to_merge

# Tokens the tokenizer keeps apart or folds together: ligatures, sharp s, dotted I, combining marks,
# full-width letters, emoji with a joiner, right-to-left script, a lone surrogate-free astral char.
WORDS = ["a", "b", "c", "d", "e", "ﬁsh", "fish", "Straße", "strasse", "İstanbul", "cafe\u0301", "café", "ＡＢＣ",
         "abc", "👩\u200d💻", "שלום", "𝔘𝔫𝔦", "x" * 40]
QUERIES = [["a"], ["a", "b", "b"], ["fish", "straße"], ["café", "abc", "e"], ["👩\u200d💻", "c", "d", "a"],
           ["שלום", "𝔘𝔫𝔦", "b"], ["zzz"], "ﬁsh ＡＢＣ İstanbul", "a b c d e"]

documents = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=12),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join),  # raw text through the tokenizer
)
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(documents, min_size=1, max_size=6), st.booleans()),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 10**6), min_size=1, max_size=4), st.booleans()),
    st.tuples(st.just("optimize"), st.none(), st.none()),
), min_size=1, max_size=14)


def _assert_scores_like(index: InvertedIndex, fresh: InvertedIndex, query, k: int) -> None:
    """Same top-k scores as ``fresh`` (float tolerance), each returned id scoring the same in ``fresh``, and
    pruned results bit-identical to exhaustive ones."""
    got = index.search(query, k)
    np.testing.assert_array_equal(got[0], index.search(query, k, prune=False)[0])
    np.testing.assert_array_equal(got[1], index.search(query, k, prune=False)[1])
    want = fresh.search(query, k)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-9)
    everything = dict(zip(*(a.tolist() for a in fresh.search(query, max(len(fresh), 1)))))
    for doc, score in zip(got[0].tolist(), got[1].tolist()):
        assert math.isclose(everything[doc], score, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.sampled_from(METHODS), st.integers(2, 4), st.sampled_from([1, 2, 4]), st.sampled_from([0, 400]))
def test_any_sequence_of_adds_deletes_and_merges_scores_like_a_fresh_index(ops, method, merge_factor, block_size,
                                                                        cache_bytes):
    index = InvertedIndex(method, block_size=block_size, merge_factor=merge_factor, impact_cache_bytes=cache_bytes)
    alive: dict[int, object] = {}  # id -> document, in insertion order
    for kind, payload, flag in ops:
        if kind == "add":
            ids = index.add(payload + payload[:1] if flag else payload)  # flag: a duplicate document too
            alive.update(zip(ids.tolist(), payload + payload[:1] if flag else payload))
        elif kind == "delete":
            present = sorted(alive)
            chosen = sorted({present[i % len(present)] for i in payload}) if present else []
            if flag or not chosen:  # flag: an unknown id makes the whole call fail, changing nothing
                with pytest.raises(UnknownIds):
                    index.delete(chosen + [10**9])
            else:
                with pytest.raises(DuplicateIds):  # an id repeated within the call changes nothing
                    index.delete(chosen + chosen[:1])
                index.delete(chosen)
                for i in chosen:
                    alive.pop(i)
        else:
            index.optimize()
            assert index.num_segments <= 1 and index.stats()["dead_documents"] == 0
    fresh = InvertedIndex(method, block_size=block_size)
    if alive:
        fresh.add(list(alive.values()), ids=list(alive))
    assert len(index) == len(fresh) == len(alive)
    stats, want = index.stats(), fresh.stats()
    assert stats["num_terms"] == want["num_terms"]
    assert math.isclose(stats["avg_doc_length"], want["avg_doc_length"], rel_tol=1e-12)
    for query in QUERIES:
        for k in (1, 3, 50):
            _assert_scores_like(index, fresh, query, k)
    got, expected = index.search_batch(QUERIES, 4), fresh.search_batch(QUERIES, 4)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-9, atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(METHODS), st.floats(0.1, 3.0), st.floats(0.0, 1.0), st.floats(0.0, 2.0),
       st.lists(st.tuples(st.integers(1, 50), st.integers(1, 400)), min_size=1, max_size=20),
       st.floats(1.0, 200.0), st.floats(1.0, 50.0))
def test_rescaled_block_bound_covers_every_posting_at_a_longer_average(method, k1, b, delta, postings, avgdl0, growth):
    """A block maximum computed at ``avgdl0`` and rescaled bounds the block's contributions at ``avgdl1``."""
    params = BM25Params(method, k1, b, delta)
    avgdl1 = avgdl0 * growth
    tfs, lengths = (np.array(column, dtype=np.float64) for column in zip(*postings))
    absent0, absent1 = (float(params.tfc(0.0, a, a)) for a in (avgdl0, avgdl1))
    assert absent0 == absent1  # tfc(0) does not depend on the average length
    old = np.max(params.tfc(tfs, lengths, avgdl0) - absent0)
    new = np.max(params.tfc(tfs, lengths, avgdl1) - absent1)
    stored = np.float32(old) if np.float32(old) >= old else np.nextafter(np.float32(old), np.float32(np.inf))
    bound = _rescaled_bound(float(stored), min(1.0, avgdl0 / avgdl1), params.code, params.k1, params.delta, absent0)
    assert new <= bound
    assert _rescaled_bound(old, 1.0, params.code, params.k1, params.delta, absent0) == old  # a shorter average


def test_merge_policy_bounds_the_segment_count_and_rewrites_half_dead_segments():
    index = InvertedIndex(merge_factor=4, block_size=4)
    for i in range(300):
        index.add([["a", f"t{i % 17}"]])
        levels = math.ceil(math.log(len(index), 4)) + 1
        assert index.num_segments <= 3 * levels
    index.delete(list(range(0, 300, 3)))
    assert index.stats()["dead_documents"] < len(index)  # no segment is left more than half dead
    assert segments_to_merge([3, 3], [10, 4], 8) == (0, 1)
    assert segments_to_merge([64, 8, 8, 8], [64, 8, 8, 8], 3) == (1, 4)
    assert segments_to_merge([64, 8, 8], [64, 8, 8], 3) is None
    ids, scores = index.search(["a"], 5)
    assert ids.size == 5 and np.isfinite(scores).all()


def test_restore_undoes_an_add_that_brought_new_terms():
    index = InvertedIndex()
    index.add(["alpha beta", "beta gamma"])
    before = index.snapshot()
    index.add(["delta epsilon", "alpha"])
    index.delete([0])
    index.restore(before)
    assert len(index) == 2 and index.search("delta", 3)[0].size == 0
    np.testing.assert_array_equal(index.search("alpha beta", 3)[0], [0, 1])
    assert index.add(["delta"]).tolist() == [2] and index.search("delta", 3)[0].tolist() == [2]


def test_save_and_load_keep_segments_and_deleted_postings(tmp_path):
    rng = np.random.default_rng(3)
    index = InvertedIndex("bm25+", block_size=4, merge_factor=16)
    for _ in range(5):
        index.add([[f"w{x % 30}" for x in rng.zipf(1.4, 12)] for _ in range(40)])
    index.delete(list(range(0, 200, 9)))
    index.save(tmp_path / "i")
    loaded = InvertedIndex.load(tmp_path / "i")
    assert loaded.num_segments == index.num_segments == 5
    assert loaded.stats()["forward_index_bytes"] == 0 < index.stats()["forward_index_bytes"]  # built by a delete

    def same_state():
        derived = ("forward_index_bytes", "index_bytes")
        assert {k: v for k, v in loaded.stats().items() if k not in derived} == \
            {k: v for k, v in index.stats().items() if k not in derived}
        for query in (["w0", "w1"], ["w3", "w7", "w7"]):
            for got, want in zip(loaded.search(query, 10), index.search(query, 10)):
                np.testing.assert_array_equal(got, want)

    same_state()
    for ids in ([1, 2, 3, 40, 199], [i for i in range(100, 160, 2) if i % 9]):  # derives its forward indexes
        loaded.delete(ids)
        index.delete(ids)
        same_state()


@pytest.mark.parametrize("method", METHODS)
def test_pruning_stays_exact_while_the_average_length_grows_over_segments(method):
    """Later batches are longer, so every older segment's block maxima are rescaled; pruned == exhaustive and
    the scores are those of a fresh index."""
    rng = np.random.default_rng(12)
    index = InvertedIndex(method, block_size=8, merge_factor=50)
    docs = []
    for batch in range(8):
        new = [[f"w{x % 200}" for x in rng.zipf(1.3, int(rng.integers(1, 10 + 15 * batch)))] for _ in range(150)]
        index.add(new)
        docs += new
    gone = rng.choice(len(docs), 200, replace=False)
    index.delete(gone)
    assert index.num_segments == 8
    keep = np.setdiff1d(np.arange(len(docs)), gone)
    fresh = InvertedIndex(method, block_size=8)
    fresh.add([docs[i] for i in keep], ids=keep)
    queries = [[f"w{x % 200}" for x in rng.zipf(1.3, int(rng.integers(1, 6)))] for _ in range(60)]
    for k in (1, 10):
        pruned, exhaustive = index.search_batch(queries, k), index.search_batch(queries, k, prune=False)
        np.testing.assert_array_equal(pruned[0], exhaustive[0])
        np.testing.assert_array_equal(pruned[1], exhaustive[1])
        np.testing.assert_allclose(pruned[1], fresh.search_batch(queries, k)[1], rtol=1e-9)


def test_a_segments_forward_index_lists_each_documents_distinct_terms():
    """Derived from the postings on first use (after adds, a merge and a load alike): each document's terms, once,
    ascending; memory counted only once built."""
    rng = np.random.default_rng(8)
    docs = [[f"t{x % 200}" for x in rng.zipf(1.3, int(rng.integers(0, 30)))] for _ in range(300)]
    index = InvertedIndex(block_size=4, merge_factor=3)
    for i in range(0, 300, 50):
        index.add(docs[i:i + 50])
    assert index.stats()["forward_index_bytes"] == 0 and index.num_segments > 1
    vocab, first = index._vocab, 0
    for segment in index._segments:
        local = np.arange(segment.num_docs)
        want = np.concatenate([np.sort([vocab[t] for t in set(docs[first + d])]).astype(np.int64) for d in local])
        np.testing.assert_array_equal(segment.global_terms_of(local), want)
        np.testing.assert_array_equal(segment.global_terms_of(local[::-7]), np.concatenate(
            [np.sort([vocab[t] for t in set(docs[first + d])]).astype(np.int64) for d in local[::-7]]))
        first += segment.num_docs
    assert index.stats()["forward_index_bytes"] > 0
    deleted = list(range(0, 300, 4))
    index.delete(deleted)
    index.optimize()  # deletes touched the merged segments: the merged one keeps a forward index
    (segment,) = index._segments
    assert segment.forward_index_nbytes() > 0
    survivors = [doc for i, doc in enumerate(docs) if i % 4]
    np.testing.assert_array_equal(segment.global_terms_of(np.arange(segment.num_docs)), np.concatenate(
        [np.sort([vocab[t] for t in set(doc)]).astype(np.int64) for doc in survivors]))
