"""BM25 search alone, for comparing two versions of the search core (with a results checksum).

The 5k-document Zipf corpus and queries of ``benchmarks/sparse.py`` (``--quick`` sizes, 2,000
queries); ``InvertedIndex.search_batch`` timed 7 times (median and best) and 500 single searches 5
times, for k = 10 and 100, with pruning on and off, plus a checksum of the scores and ids (equal
checksums: equal results). Prints the figures as one JSON line and writes
``benchmarks/results/bm25_search.json``. Run it on each tree in turn, in one session, and compare
ratios:

    NUMBA_NUM_THREADS=1 PYTHONPATH=. python -m benchmarks.bm25_search
"""

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks._common import write_results
from benchmarks.sparse import zipf_corpus, zipf_ranks
from llmds_torch.retrieval import InvertedIndex


def queries_for(rng, corpus, count, vocab_size):
    known = {t for doc in corpus for t in doc}
    queries = []
    while len(queries) < count:
        ranks = zipf_ranks(rng, int(rng.integers(2, 6)), vocab_size)
        terms = list(dict.fromkeys(t for t in (f"t{r}" for r in ranks) if t in known))
        if terms:
            queries.append(terms)
    return queries


def main(argv=None) -> dict:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    rng = np.random.default_rng(0)
    corpus = zipf_corpus(rng, 5_000, 20_000)
    queries = queries_for(rng, corpus, 2_000, 20_000)
    index = InvertedIndex("lucene")
    index.add(corpus)
    out = {}
    for k in (10, 100):
        for prune in (True, False):
            index.search_batch(queries[:50], k, prune=prune)  # compile / warm
            times = []
            for _ in range(7):
                start = time.perf_counter()
                ids, scores = index.search_batch(queries, k, prune=prune)
                times.append(time.perf_counter() - start)
            name = f"k{k}_prune{int(prune)}"
            out[f"batched_qps_{name}"] = len(queries) / statistics.median(times)
            out[f"batched_qps_best_{name}"] = len(queries) / min(times)
            scores = np.asarray(scores, dtype=float)
            out[f"checksum_{name}"] = float(scores[np.isfinite(scores)].sum()) + float(np.asarray(ids).sum())
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for query in queries[:500]:
                index.search(query, k)
            times.append(time.perf_counter() - start)
        out[f"single_qps_k{k}"] = 500 / statistics.median(times)
        out[f"single_qps_best_k{k}"] = 500 / min(times)
    print(json.dumps(out))
    write_results("bm25_search", out)
    return out


if __name__ == "__main__":
    main()
