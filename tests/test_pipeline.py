"""RetrievalPipeline against its parts composed by hand, plus the embedder and the stdlib corpus."""

import numpy as np
import pytest
import torch

from llmds_torch.errors import ConfigError
from llmds_torch.retrieval.embedder import HashingEmbedder
from llmds_torch.retrieval.errors import (
    DimensionMismatch,
    DuplicateIds,
    InvalidIds,
    InvalidDocument,
    InvalidQuery,
    NonFiniteVectors,
    UnknownIds,
)
from llmds_torch.retrieval.flat_index import FlatIndex
from llmds_torch.retrieval.fusion import fuse
from llmds_torch.retrieval.inverted_index import InvertedIndex
from llmds_torch.retrieval.pipeline import PipelineConfig, RetrievalPipeline
from llmds_torch.retrieval.stdlib_corpus import stdlib_documents

DIM = 64


@pytest.fixture(scope="module")
def corpus():
    return [text for _, text in stdlib_documents(max_documents=300)]


def make_pipeline(**config):
    embedder = HashingEmbedder(DIM, seed=1)
    return RetrievalPipeline(embedder, FlatIndex(DIM, "cosine"), InvertedIndex(), PipelineConfig(**config))


@pytest.mark.parametrize("fusion", ["rrf", "convex", "dbsf"])
def test_query_equals_parts_composed_by_hand(corpus, fusion):
    pipeline = make_pipeline(fusion=fusion, weights=(0.4, 0.6), candidates=20)
    pipeline.add(corpus)
    embedder, flat, sparse = HashingEmbedder(DIM, seed=1), FlatIndex(DIM, "cosine"), InvertedIndex()
    flat.add(embedder.embed(corpus))
    sparse.add(corpus)
    for query in ["return the decoded JSON object", "socket connection timeout", "zzzz unknown words"]:
        dense_ids, dense_dist = flat.search(embedder.embed([query]), 20)
        expected = fuse([(dense_ids[0].numpy(), -dense_dist[0].double().numpy()), sparse.search(query, 20)],
                        10, fusion, (0.4, 0.6))
        got = pipeline.query(query, k=10)
        np.testing.assert_array_equal(got.ids, expected[0])
        np.testing.assert_allclose(got.scores, expected[1], atol=1e-6)
        assert not got.from_cache


def test_cache_hits_and_invalidation(corpus):
    pipeline = make_pipeline(cache_capacity=8)
    pipeline.add(corpus[:200])
    first = pipeline.query("parse command line arguments", k=5)
    again = pipeline.query("parse command line arguments", k=5)
    assert again.from_cache and np.array_equal(first.ids, again.ids)
    assert not pipeline.query("parse command line arguments", k=6).from_cache  # k is part of the key
    pipeline.add(corpus[200:])  # new documents: stale results go
    fresh = pipeline.query("parse command line arguments", k=5)
    assert not fresh.from_cache
    stats = pipeline.stats()
    assert stats["cache"]["hits"] == 1 and stats["queries"] == 4
    assert stats["stages"]["sparse"]["calls"] == 3 and stats["stages"]["dense"]["calls"] == 3
    assert stats["stages"]["fusion"]["total_ms"] > 0 and stats["num_documents"] == len(corpus)


def test_prime_cache_after_invalidation(corpus):
    pipeline = make_pipeline(cache_capacity=4)
    pipeline.add(corpus[:100])
    for _ in range(5):
        pipeline.query("read bytes from a file", k=3)
        pipeline.query("thread lock", k=3, vector=torch.ones(DIM))  # vector queries cannot be re-run
    pipeline.add(corpus[100:150])
    assert len(pipeline.cache) == 0
    assert pipeline.prime_cache() == 1
    hit = pipeline.query("read bytes from a file", k=3)
    assert hit.from_cache
    pipeline.cache.clear()
    assert np.array_equal(pipeline.query("read bytes from a file", k=3).ids, hit.ids)


def test_explicit_vectors_and_delete(corpus):
    rng = np.random.default_rng(0)
    pipeline = make_pipeline(cache_capacity=0)
    vectors = rng.normal(size=(50, DIM)).astype(np.float32)
    ids = pipeline.add(corpus[:50], vectors=vectors, ids=np.arange(100, 150))
    result = pipeline.query("qqqxyz", k=3, vector=vectors[7])
    assert result.ids[0] == 107  # no sparse match: the dense side alone, where the exact vector wins
    pipeline.delete([107, 108])
    assert len(pipeline) == 48 and 107 not in pipeline.query("qqqxyz", k=48, vector=vectors[7]).ids
    with pytest.raises(UnknownIds):
        pipeline.delete([107])
    assert pipeline.text(int(ids[0])) == corpus[0]


def test_default_dense_index_is_hnsw(corpus):
    pipeline = RetrievalPipeline(HashingEmbedder(DIM))
    assert type(pipeline.dense_index).__name__ == "HNSW"
    pipeline.add(corpus[:30])
    assert pipeline.query("string formatting", k=50).ids.size > 0  # k above the corpus size is clamped


def test_bad_input_changes_nothing(corpus):
    pipeline = make_pipeline()
    pipeline.add(corpus[:10])
    before = pipeline.sparse_index.stats()
    with pytest.raises(InvalidDocument):
        pipeline.add(["fine", 3])
    with pytest.raises(InvalidDocument):
        pipeline.add("one string")
    with pytest.raises(DimensionMismatch):
        pipeline.add(["a", "b"], vectors=np.ones((2, DIM + 1), np.float32))
    with pytest.raises(NonFiniteVectors):  # the dense side refuses a zero vector: the sparse add is undone
        pipeline.add(["a", "b"], vectors=np.zeros((2, DIM), np.float32))
    assert pipeline.sparse_index.stats() == before and len(pipeline) == 10
    with pytest.raises(InvalidQuery):
        pipeline.query(["token", "list"])
    with pytest.raises(DimensionMismatch):
        pipeline.query("x", vector=np.full(DIM, np.nan))
    with pytest.raises(ConfigError):
        PipelineConfig(weights=(1.0, float("nan")))
    with pytest.raises(ConfigError):
        PipelineConfig(fusion="borda")
    assert make_pipeline().query("", k=5).ids.size == 0  # empty pipeline, empty query


def test_hashing_embedder_is_deterministic_and_normalized():
    a, b = HashingEmbedder(128, seed=3), HashingEmbedder(128, seed=3)
    texts = ["The quick brown fox", "", "fox quick the brown", "The quick brown fox"]
    va, vb = a.embed(texts), b.embed(texts)
    assert torch.equal(va, vb) and torch.equal(va[0], va[3])
    torch.testing.assert_close(va.norm(dim=1), torch.ones(4))
    assert not torch.equal(va[0], va[2])  # bigrams see word order
    assert not torch.equal(va[0], HashingEmbedder(128, seed=4).embed(texts[:1])[0])
    with pytest.raises(InvalidDocument):
        a.embed([1])


def test_stdlib_corpus_is_deterministic():
    first, second = stdlib_documents(max_documents=50), stdlib_documents(max_documents=50)
    assert first == second and len(first) == 50
    assert all(isinstance(t, str) and len(x) >= 40 for t, x in first)
    assert len({t for t, _ in first}) == 50


class _FailingDense(FlatIndex):
    """A dense index that validates like FlatIndex and then fails in the middle of an add or delete."""

    fail = False

    def add(self, vectors, ids=None):
        if self.fail:
            raise RuntimeError("dense add failed midway")
        return super().add(vectors, ids=ids)

    def delete(self, ids):
        if self.fail:
            raise RuntimeError("dense delete failed midway")
        return super().delete(ids)


def _state(pipeline, queries):
    sparse = [tuple(a.tolist()) for q in queries for a in pipeline.sparse_index.search(q, 20)]
    dense = len(pipeline.dense_index), len(pipeline.sparse_index), len(pipeline)
    derived = ("forward_index_bytes", "index_bytes")  # memory a delete may build on first use, even one undone
    return sparse, dense, {k: v for k, v in pipeline.sparse_index.stats().items() if k not in derived}


def test_delete_with_repeated_ids_changes_nothing(corpus):
    pipeline = make_pipeline()
    pipeline.add(corpus[:20])
    queries = ["string format", "file path"]
    before = _state(pipeline, queries)
    with pytest.raises(DuplicateIds):
        pipeline.delete([1, 1])
    with pytest.raises(UnknownIds):
        pipeline.delete([1, 999])
    with pytest.raises(InvalidIds):
        pipeline.delete(np.array([1.0, 2.0]))
    assert _state(pipeline, queries) == before
    pipeline.delete([1])  # still in step: the single delete works on both sides
    assert len(pipeline.dense_index) == len(pipeline.sparse_index) == len(pipeline) == 19


def test_a_failing_dense_index_leaves_the_sparse_index_exactly_as_before(corpus):
    embedder = HashingEmbedder(DIM, seed=1)
    dense = _FailingDense(DIM, "cosine")
    pipeline = RetrievalPipeline(embedder, dense, InvertedIndex(), PipelineConfig())
    pipeline.add(corpus[:20])
    queries = ["string format", "file path", "module import"]
    before = _state(pipeline, queries)
    dense.fail = True
    with pytest.raises(RuntimeError, match="add failed"):
        pipeline.add(corpus[20:25])
    with pytest.raises(RuntimeError, match="delete failed"):
        pipeline.delete([3, 4])
    assert _state(pipeline, queries) == before
    dense.fail = False
    pipeline.delete([3, 4])
    pipeline.add(corpus[20:25])
    assert len(pipeline.dense_index) == len(pipeline.sparse_index) == len(pipeline) == 23


def test_non_finite_vectors_are_refused_before_either_index_changes(corpus):
    pipeline = make_pipeline()
    pipeline.add(corpus[:5])
    before = _state(pipeline, ["string"])
    vectors = np.ones((2, DIM), np.float32)
    vectors[1, 3] = np.inf
    with pytest.raises(NonFiniteVectors):
        pipeline.add(["a", "b"], vectors=vectors)
    assert _state(pipeline, ["string"]) == before
