"""Top-10 ids and scores match bm25s's lucene method on the same pre-tokenized corpus."""

import numpy as np
import pytest

from llmds_torch.retrieval.inverted_index import InvertedIndex

bm25s = pytest.importorskip("bm25s")


@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (1.2, 0.3)])
def test_top10_matches_bm25s_lucene(k1, b):
    rng = np.random.default_rng(21)
    vocab = 400
    docs = [[f"w{x % vocab}" for x in rng.zipf(1.25, int(rng.integers(5, 80)))] for _ in range(3000)]
    ours = InvertedIndex("lucene", k1=k1, b=b)
    ours.add(docs)
    theirs = bm25s.BM25(method="lucene", k1=k1, b=b)
    theirs.index(docs, show_progress=False)

    known = sorted({t for d in docs for t in d})
    compared = 0
    for _ in range(40):
        query = list(dict.fromkeys(rng.choice(known, size=int(rng.integers(1, 5))).tolist()))
        our_ids, our_scores = ours.search(query, 11)  # the 11th tells whether the 10th ties
        if our_ids.size < 11:
            continue
        eleventh = our_scores[10]
        our_ids, our_scores = our_ids[:10], our_scores[:10]
        their_ids, their_scores = theirs.retrieve([query], k=10, show_progress=False)
        their_ids, their_scores = their_ids[0], their_scores[0]
        np.testing.assert_allclose(our_scores, their_scores, rtol=2e-5, atol=1e-5)
        # Ids agree except where bm25s's float32 scores tie or nearly tie.
        distinct = np.abs(np.diff(np.concatenate([[np.inf], our_scores, [eleventh]]))) > 1e-4
        unique_rank = distinct[:-1] & distinct[1:]
        np.testing.assert_array_equal(our_ids[unique_rank], their_ids[unique_rank])
        assert set(our_ids[our_scores > our_scores[-1] + 1e-4]) <= set(their_ids.tolist())
        compared += 1
    assert compared >= 20
