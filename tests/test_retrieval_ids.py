"""The same bad id raises the same error class in every retrieval structure (HNSW, FlatIndex,
InvertedIndex, RetrievalPipeline, fusion), and a refused call changes nothing."""

import numpy as np
import pytest
import torch

from llmds_torch.errors import LLMDSError
from llmds_torch.retrieval import FlatIndex, HNSW, InvertedIndex, PipelineConfig, RetrievalPipeline, fuse
from llmds_torch.retrieval.embedder import HashingEmbedder
from llmds_torch.retrieval.errors import DuplicateIds, InvalidIds, UnknownIds

DIM = 8
START_IDS = [0, 1, 2, 3, 4]  # every index starts holding these


def _vectors(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)


def _texts(n: int) -> list[str]:
    return [f"common word{i} other{i % 3}" for i in range(n)]


class VectorKind:
    def __init__(self, make):
        self.make = make

    def add(self, index, count, ids):
        return index.add(_vectors(count), ids=ids)

    def contents(self, index):
        ids, _ = index.search(_vectors(len(START_IDS))[:1], len(index))
        return len(index), sorted(np.asarray(ids).reshape(-1).tolist())


class InvertedKind:
    make = staticmethod(InvertedIndex)

    def add(self, index, count, ids):
        return index.add(_texts(count), ids=ids)

    def contents(self, index):
        return len(index), sorted(index.search("common", 10)[0].tolist())


class PipelineKind(InvertedKind):
    @staticmethod
    def make():
        return RetrievalPipeline(HashingEmbedder(DIM, seed=1), FlatIndex(DIM, "cosine"), InvertedIndex(),
                                 PipelineConfig(cache_capacity=0))

    def contents(self, index):
        return len(index), sorted(index.query("common", 10).ids.tolist())


KINDS = {
    "hnsw": VectorKind(lambda: HNSW(DIM, M=4, ef_construction=16, seed=0)),
    "flat": VectorKind(lambda: FlatIndex(DIM)),
    "inverted": InvertedKind(),
    "pipeline": PipelineKind(),
}

# (case, ids, error) for ids that are bad wherever they appear; the vectors / documents match in count.
BAD_EVERYWHERE = [
    ("negative", [-1], InvalidIds),
    ("negative among good", [7, -3], InvalidIds),
    ("string", ["7"], InvalidIds),
    ("None", [None], InvalidIds),
    ("bool", [True], InvalidIds),
    ("bool among ints", [7, True], InvalidIds),
    ("bool scalar", True, InvalidIds),
    ("bool array", np.array([True, False]), InvalidIds),
    ("bool tensor", torch.tensor([True]), InvalidIds),
    ("float", [7.0], InvalidIds),
    ("float array", np.array([7.5]), InvalidIds),
    ("float tensor", torch.tensor([7.0]), InvalidIds),
    ("past int64", [2**63], InvalidIds),
    ("past uint64", [2**64], InvalidIds),
    ("past int64 as uint64", np.array([2**63], np.uint64), InvalidIds),
    ("negative and past int64", [-1, 2**63], InvalidIds),
    ("ragged", [[7], [8, 9]], InvalidIds),
    ("repeated", [7, 7], DuplicateIds),
    ("repeated tensor", torch.tensor([8, 7, 8]), DuplicateIds),
]
BAD_FOR_ADD = BAD_EVERYWHERE + [
    ("already present", [2], DuplicateIds),
    ("already present among new", [8, 2], DuplicateIds),
]
BAD_FOR_DELETE = BAD_EVERYWHERE + [
    ("bool that equals a present id", [True], InvalidIds),
    ("float that equals a present id", [1.0], InvalidIds),
    ("repeated present", [1, 1], DuplicateIds),
    ("unknown", [99], UnknownIds),
    ("unknown among present", [1, 99], UnknownIds),
]


def _count(ids) -> int:
    return int(np.size(np.asarray(ids, dtype=object))) if not isinstance(ids, torch.Tensor) else ids.numel()


def _started(kind):
    index = kind.make()
    kind.add(index, len(START_IDS), START_IDS)
    return index


def _raises_exactly(error, call):
    with pytest.raises(LLMDSError) as info:
        call()
    assert type(info.value) is error, f"raised {type(info.value).__name__}: {info.value}"


CASES = [("add", *case) for case in BAD_FOR_ADD] + [("delete", *case) for case in BAD_FOR_DELETE]


@pytest.mark.parametrize("kind_name", KINDS)
@pytest.mark.parametrize("operation,case,ids,error", CASES, ids=[f"{op}-{case}" for op, case, _, _ in CASES])
def test_bad_ids_raise_one_class_and_change_nothing(kind_name, operation, case, ids, error):
    kind = KINDS[kind_name]
    index = _started(kind)
    before = kind.contents(index)
    if operation == "add":
        _raises_exactly(error, lambda: kind.add(index, _count(ids), ids))
    else:
        _raises_exactly(error, lambda: index.delete(ids))
    assert kind.contents(index) == before


@pytest.mark.parametrize("kind_name", KINDS)
def test_count_mismatch_is_invalid_ids(kind_name):
    kind = KINDS[kind_name]
    index = _started(kind)
    before = kind.contents(index)
    _raises_exactly(InvalidIds, lambda: kind.add(index, 1, [7, 8]))
    _raises_exactly(InvalidIds, lambda: kind.add(index, 2, [7]))
    assert kind.contents(index) == before


@pytest.mark.parametrize("kind_name", KINDS)
def test_good_ids_in_every_form_are_accepted(kind_name):
    kind = KINDS[kind_name]
    index = _started(kind)
    kind.add(index, 3, np.array([5, 2**40, 2**63 - 1], np.uint64))
    kind.add(index, 2, torch.tensor([6, 7], dtype=torch.int32))
    kind.add(index, 1, 8)
    index.delete(torch.tensor([2**40]))
    index.delete(np.int64(0))
    assert kind.contents(index) == (9, [1, 2, 3, 4, 5, 6, 7, 8, 2**63 - 1])


@pytest.mark.parametrize("kind_name", KINDS)
def test_default_ids_after_the_largest_id_are_refused_not_wrapped(kind_name):
    kind = KINDS[kind_name]
    index = _started(kind)
    kind.add(index, 1, [2**63 - 2])
    kind.add(index, 1, None)  # takes the last id, 2**63 - 1
    before = kind.contents(index)
    assert before[1][-2:] == [2**63 - 2, 2**63 - 1]
    _raises_exactly(InvalidIds, lambda: kind.add(index, 1, None))
    assert kind.contents(index) == before


@pytest.mark.parametrize("case,ids,error", BAD_EVERYWHERE, ids=[case for case, _, _ in BAD_EVERYWHERE])
def test_fusion_refuses_bad_ids_with_the_same_class(case, ids, error):
    scores = np.linspace(1.0, 0.0, _count(ids))
    for method in ("rrf", "convex", "dbsf"):
        _raises_exactly(error, lambda: fuse([([3, 4], [0.5, 0.2]), (ids, scores)], 5, method=method))


@pytest.mark.parametrize("doc_id,error", [(99, UnknownIds), (-1, InvalidIds), (True, InvalidIds),
                                          (1.0, InvalidIds), ("1", InvalidIds), ([1, 2], InvalidIds)])
def test_pipeline_text_refuses_bad_ids(doc_id, error):
    pipeline = _started(KINDS["pipeline"])
    _raises_exactly(error, lambda: pipeline.text(doc_id))
    assert pipeline.text(1) == _texts(5)[1]


def test_the_hierarchy():
    assert issubclass(InvalidIds, ValueError) and issubclass(InvalidIds, LLMDSError)
    assert issubclass(DuplicateIds, InvalidIds)
    assert issubclass(UnknownIds, InvalidIds) and issubclass(UnknownIds, KeyError)
    assert str(UnknownIds("ids [3] are not in the index")) == "ids [3] are not in the index"
