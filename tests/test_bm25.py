"""InvertedIndex scores against a plain-loop reference of each BM25 variant, pruning on and off."""

import math
from collections import Counter

import numpy as np
import pytest

from llmds_torch.errors import ConfigError, LLMDSError
from llmds_torch.retrieval.errors import (
    CorruptIndexFile,
    DuplicateIds,
    InvalidIds,
    InvalidDocument,
    InvalidQuery,
    InvalidSearchParameter,
    UnknownIds,
)
from llmds_torch.retrieval.inverted_index import InvertedIndex
from llmds_torch.retrieval.tokenizer import ENGLISH_STOPWORDS, Tokenizer

METHODS = ["lucene", "robertson", "atire", "bm25l", "bm25+"]


def reference_idf(method, df, n):
    if method == "robertson":
        return math.log(max(1.0, (n - df + 0.5) / (df + 0.5)))
    if method == "lucene":
        return math.log(1 + (n - df + 0.5) / (df + 0.5))
    if method == "atire":
        return math.log(n / df)
    if method == "bm25l":
        return math.log((n + 1) / (df + 0.5))
    return math.log((n + 1) / df)


def reference_tfc(method, tf, length, avgdl, k1, b, delta):
    norm = 1 - b + b * length / avgdl
    if method in ("robertson", "lucene"):
        return tf / (k1 * norm + tf)
    if method == "atire":
        return tf * (k1 + 1) / (tf + k1 * norm)
    if method == "bm25l":
        c = tf / norm
        return (k1 + 1) * (c + delta) / (k1 + c + delta)
    return (k1 + 1) * tf / (k1 * norm + tf) + delta


def reference_scores(docs, query, method, k1=1.5, b=0.75, delta=0.5):
    """{doc index: score} for every document holding at least one query term, by plain loops."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    known = [t for t in query if df[t] > 0]
    scores = {}
    for i, doc in enumerate(docs):
        counts = Counter(doc)
        if not any(counts[t] for t in known):
            continue
        score = 0.0
        for t in known:
            score += reference_idf(method, df[t], n) * reference_tfc(method, counts[t], len(doc), avgdl, k1, b, delta)
        scores[i] = score
    return scores


def zipf_corpus(rng, num_docs, vocab_size, max_len=40):
    return [[f"w{x % vocab_size}" for x in rng.zipf(1.3, int(rng.integers(1, max_len)))] for _ in range(num_docs)]


def zipf_queries(rng, num_queries, vocab_size):
    return [[f"w{x % vocab_size}" for x in rng.zipf(1.3, int(rng.integers(1, 6)))] for _ in range(num_queries)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("params", [dict(k1=1.5, b=0.75, delta=0.5), dict(k1=0.9, b=0.4, delta=1.0)])
@pytest.mark.parametrize("impact_cache_bytes", [0, 2**20])
def test_scores_equal_plain_loop_reference(method, params, impact_cache_bytes):
    rng = np.random.default_rng(11)
    docs = zipf_corpus(rng, 400, 300)
    index = InvertedIndex(method, block_size=8, impact_cache_bytes=impact_cache_bytes, **params)
    index.add(docs)
    for query in zipf_queries(rng, 30, 300) + [["w0", "w0", "w1"]]:  # repeated terms count twice
        expected = reference_scores(docs, query, method, **params)
        ids, scores = index.search(query, k=len(docs))
        assert sorted(ids.tolist()) == sorted(expected)
        np.testing.assert_allclose(scores, [expected[i] for i in ids.tolist()], rtol=0, atol=1e-6)
        assert np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 5, 10, 50])
def test_pruning_changes_nothing(method, k):
    rng = np.random.default_rng(5)
    docs = zipf_corpus(rng, 3000, 500, max_len=60)
    index = InvertedIndex(method, block_size=16)
    index.add(docs)
    queries = zipf_queries(rng, 100, 500)
    pruned = index.search_batch(queries, k, prune=True)
    exhaustive = index.search_batch(queries, k, prune=False)
    np.testing.assert_array_equal(pruned[0], exhaustive[0])
    np.testing.assert_array_equal(pruned[1], exhaustive[1])
    # ... and the top k is the reference's top k (ties broken by insertion order).
    for q in range(0, 100, 10):
        expected = reference_scores(docs, queries[q], method)
        best = sorted(expected, key=lambda i: (-expected[i], i))[:k]
        found = pruned[0][q][pruned[0][q] >= 0]
        np.testing.assert_allclose(pruned[1][q][: found.size], [expected[i] for i in best], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_impact_cache_changes_nothing(method):
    rng = np.random.default_rng(6)
    docs = [doc + ["everywhere"] for doc in zipf_corpus(rng, 1500, 400, max_len=50)]  # one term in every doc
    queries = zipf_queries(rng, 60, 400) + [["everywhere"], ["everywhere", "w0", "w1"], ["w0", "w1", "w2", "w3"]]
    results, cached_terms = {}, {}
    for budget in [0, 12 * 3000, 2**24]:  # none, some terms, every term longer than one block
        index = InvertedIndex(method, block_size=16, impact_cache_bytes=budget)
        index.add(docs)
        stats = index.stats()
        assert stats["impact_cache_bytes"] <= budget
        cached_terms[budget] = stats["impact_cache_terms"]
        results[budget] = [index.search_batch(queries, k, prune=prune) for k in (3, 10, len(docs))
                           for prune in (True, False)]
        results[budget] += [index.search(query, 10) for query in queries]
    assert 0 == cached_terms[0] < cached_terms[12 * 3000] < cached_terms[2**24]
    for budget in results:
        for got, want in zip(results[budget], results[0]):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    # With k = every document, the query of the term in every doc returns them all, scored as the reference.
    expected = reference_scores(docs, ["everywhere", "w0", "w1"], method)
    ids, scores = index.search(["everywhere", "w0", "w1"], len(docs))
    assert sorted(ids.tolist()) == list(range(len(docs)))
    np.testing.assert_allclose(scores, [expected[i] for i in ids.tolist()], rtol=0, atol=1e-6)


def test_impact_cache_budget_is_validated_and_saved(tmp_path):
    for bad in [-1, 2.5, True, None]:
        with pytest.raises(ConfigError):
            InvertedIndex(impact_cache_bytes=bad)
    index = InvertedIndex(block_size=4, impact_cache_bytes=1000)
    index.add(zipf_corpus(np.random.default_rng(3), 200, 50))
    index.save(tmp_path / "small_cache.idx")
    loaded = InvertedIndex.load(tmp_path / "small_cache.idx")
    assert loaded.impact_cache_bytes == 1000 and loaded.stats() == index.stats()


def test_batched_equals_single_and_serial_equals_parallel():
    rng = np.random.default_rng(2)
    docs = zipf_corpus(rng, 800, 200)
    index = InvertedIndex()
    index.add(docs)
    queries = zipf_queries(rng, 40, 200)
    parallel = index.search_batch(queries, 7, parallel=True)
    serial = index.search_batch(queries, 7, parallel=False)
    np.testing.assert_array_equal(parallel[0], serial[0])
    for q, query in enumerate(queries):
        ids, scores = index.search(query, 7)
        np.testing.assert_array_equal(ids, parallel[0][q][: ids.size])
        assert np.all(parallel[0][q][ids.size:] == -1)


def test_raw_text_ids_and_tokenizer():
    index = InvertedIndex(tokenizer=Tokenizer(stopwords=ENGLISH_STOPWORDS))
    assert index.add(["The quick brown Fox", "a lazy dog", "the FOX and the dog"]).tolist() == [0, 1, 2]
    assert index.add(["Fuchs über Straße"]).tolist() == [3]
    ids, _ = index.search("fox", 10)
    assert sorted(ids.tolist()) == [0, 2]
    assert index.search("ÜBER", 10)[0].tolist() == [3]
    assert index.search("the", 10)[0].size == 0  # a stopword only
    assert index.add([["pre", "Tokenized"]], ids=[40]).tolist() == [40]
    assert index.search(["Tokenized"], 3)[0].tolist() == [40]
    assert index.search("tokenized", 3)[0].size == 0  # token lists are taken as given
    assert index.add(["next one"]).tolist() == [41]


def test_empty_and_unknown_queries_give_empty_results():
    index = InvertedIndex()
    assert index.search("anything", 5)[0].size == 0  # empty index
    index.add(["alpha beta", "beta gamma"])
    for query in ["", [], "   ", "delta epsilon", ["zeta"], "!!!"]:
        ids, scores = index.search(query, 5)
        assert ids.size == 0 and scores.size == 0
    ids, scores = index.search_batch(["", "beta"], 3)
    assert ids[0].tolist() == [-1, -1, -1] and sorted(ids[1][:2].tolist()) == [0, 1]


def test_bad_input_is_refused_before_any_change():
    index = InvertedIndex()
    index.add(["one two", "two three"])
    before = index.search("two", 5)
    for bad in [[1, "text"], ["ok", None], [["tok", 3]], "a single string", 42, [b"bytes"]]:
        with pytest.raises(InvalidDocument):
            index.add(bad)
    with pytest.raises(DuplicateIds):
        index.add(["x"], ids=[0])
    with pytest.raises(DuplicateIds):
        index.add(["x", "y"], ids=[7, 7])
    with pytest.raises(InvalidIds):
        index.add(["x"], ids=[-3])
    with pytest.raises(UnknownIds):
        index.delete([0, 99])
    for bad_query in [None, 3, [1, 2], ["ok", 5]]:
        with pytest.raises(InvalidQuery):
            index.search(bad_query, 5)
    for bad_k in [0, -1, 2.5]:
        with pytest.raises(InvalidSearchParameter):
            index.search("two", bad_k)
    with pytest.raises(ConfigError):
        InvertedIndex("bm26")
    with pytest.raises(ConfigError):
        InvertedIndex(b=1.5)
    assert len(index) == 2 and index.stats()["num_postings"] == 4
    after = index.search("two", 5)
    np.testing.assert_array_equal(before[0], after[0])
    assert issubclass(InvalidDocument, LLMDSError) and issubclass(InvalidDocument, TypeError)


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_delete_equals_index_of_the_rest(method):
    rng = np.random.default_rng(8)
    docs = zipf_corpus(rng, 500, 150)
    index = InvertedIndex(method, block_size=8)
    index.add(docs)
    gone = rng.choice(500, 120, replace=False)
    index.delete(gone)
    keep = np.setdiff1d(np.arange(500), gone)
    fresh = InvertedIndex(method, block_size=8)
    fresh.add([docs[i] for i in keep], ids=keep)
    assert len(index) == 380
    for query in zipf_queries(rng, 20, 150):
        got, want = index.search(query, 20), fresh.search(query, 20)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=1e-9)
    with pytest.raises(UnknownIds):
        index.delete([int(gone[0])])


def test_save_load_round_trip_and_corruption(tmp_path):
    rng = np.random.default_rng(4)
    index = InvertedIndex("bm25l", k1=1.2, b=0.6, delta=0.7, tokenizer=Tokenizer(stopwords={"w0"}))
    index.add(zipf_corpus(rng, 300, 100), ids=np.arange(1000, 1300))
    index.add(["naïve café", "w1 w2"])
    index.delete([1005, 1006])
    path = tmp_path / "bm25.idx"
    index.save(path)
    loaded = InvertedIndex.load(path)
    derived = ("forward_index_bytes", "index_bytes")  # forward indexes are built by the first delete, not loaded
    assert {k: v for k, v in loaded.stats().items() if k not in derived} == \
        {k: v for k, v in index.stats().items() if k not in derived}
    assert loaded.stats()["forward_index_bytes"] == 0
    for query in zipf_queries(rng, 10, 100) + ["café", "w0 w1"]:
        np.testing.assert_array_equal(loaded.search(query, 10)[0], index.search(query, 10)[0])
        np.testing.assert_array_equal(loaded.search(query, 10)[1], index.search(query, 10)[1])
    assert loaded.add(["again"]).tolist() == [1302]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexFile, match="checksum"):
        InvertedIndex.load(path)
    path.write_bytes(b"not an index at all, just some bytes....")
    with pytest.raises(CorruptIndexFile):
        InvertedIndex.load(path)


def test_stats_report_compression_against_raw_int32():
    rng = np.random.default_rng(9)
    index = InvertedIndex()
    index.add(zipf_corpus(rng, 2000, 400, max_len=80))
    stats = index.stats()
    assert stats["raw_int32_postings_bytes"] == 8 * stats["num_postings"]
    assert 0 < stats["compressed_postings_bytes"] < stats["raw_int32_postings_bytes"]
    assert stats["compression_ratio"] == pytest.approx(stats["compressed_postings_bytes"] / stats["raw_int32_postings_bytes"])


def test_long_gaps_and_large_term_frequencies_decode_in_search():
    # Gaps of ~20k docs take three varint bytes once tf is folded in; tf = 300 takes two.
    docs = [["filler"] for _ in range(20_000)]
    docs[0], docs[19_999], docs[9_000] = ["rare", "filler"], ["rare"] * 300, ["rare", "rare"]
    index = InvertedIndex(block_size=2)  # three postings of "rare" span two blocks
    index.add(docs)
    expected = reference_scores(docs, ["rare"], "lucene")
    for prune in (True, False):
        ids, scores = index.search(["rare"], 5, prune=prune)
        assert sorted(ids.tolist()) == [0, 9_000, 19_999]
        np.testing.assert_allclose(scores, [expected[i] for i in ids.tolist()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_empty_documents_with_full_length_normalization(method):
    """b = 1 gives an empty document a length norm of 0; it has no postings, so nothing divides by it."""
    index = InvertedIndex(method, b=1.0)
    index.add([[], ["a", "b"], ["a"], []])
    ids, scores = index.search(["a"], 4)
    assert sorted(ids.tolist()) == [1, 2] and np.isfinite(scores).all()


def test_k1_zero_is_refused():
    with pytest.raises(ConfigError, match="k1"):
        InvertedIndex(k1=0.0)
