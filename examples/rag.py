"""Retrieval for RAG over the Python standard library's own docstrings (no download needed).

Indexes module, class and function docstrings in a hybrid pipeline (hashing-embedder vectors in
HNSW + BM25), asks a few questions, some repeatedly as real traffic does, and shows the fused
results, the hot-query cache's hits and the per-stage timings.

    python -m examples.rag            # the whole stdlib corpus
    python -m examples.rag --quick    # 400 documents, a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import time

from llmds_torch.retrieval import HashingEmbedder, PipelineConfig, RetrievalPipeline, stdlib_documents

QUESTIONS = [
    "how do I parse command line arguments",
    "decode a JSON document into a Python object",
    "open a compressed gzip file",
    "wait for a thread to finish",
    "compute a hash digest of bytes",
    "format a date as a string",
]
# Popular questions repeat: question i is asked (len(QUESTIONS) - i) times, interleaved.
TRAFFIC = [q for round_ in range(len(QUESTIONS)) for q in QUESTIONS[: len(QUESTIONS) - round_]]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="index 400 documents only")
    parser.add_argument("--max-documents", type=int, default=None, help="cap on documents")
    parser.add_argument("--fusion", default="rrf", choices=["rrf", "convex", "dbsf"])
    parser.add_argument("--k", type=int, default=3, help="results shown per question")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args(argv)
    limit = 400 if args.quick else args.max_documents

    start = time.perf_counter()
    documents = stdlib_documents(max_documents=limit)
    read_s = time.perf_counter() - start
    pipeline = RetrievalPipeline(HashingEmbedder(256), config=PipelineConfig(fusion=args.fusion, cache_capacity=4))
    start = time.perf_counter()
    ids = pipeline.add([f"{title}\n{text}" for title, text in documents])
    index_s = time.perf_counter() - start
    titles = dict(zip(ids.tolist(), (title for title, _ in documents)))
    if not args.json:
        print(f"indexed {len(documents)} stdlib docstrings in {index_s:.2f}s (read in {read_s:.2f}s)")

    shown = set()
    for question in TRAFFIC:
        result = pipeline.query(question, k=args.k)
        if args.json or question in shown:
            continue
        shown.add(question)
        print(f"\nQ: {question}")
        for rank, (doc_id, score) in enumerate(zip(result.ids.tolist(), result.scores.tolist()), start=1):
            print(f"  {rank}. {titles[doc_id]:<55} fused score {score:.4f}")

    stats = pipeline.stats()
    summary = {
        "documents": len(documents),
        "queries": stats["queries"],
        "cache": stats["cache"],
        "stage_mean_ms": {stage: round(s["mean_ms"], 3) for stage, s in stats["stages"].items()},
        "compression_ratio": round(stats["sparse"]["compression_ratio"], 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        cache = stats["cache"]
        print(f"\n{stats['queries']} queries: {cache['hits']} cache hits ({cache['hit_rate']:.0%}), "
              f"{cache['admitted']} admitted, {cache['rejected']} rejected by TinyLFU, {cache['evicted']} evicted")
        print("mean ms per stage:", summary["stage_mean_ms"])
        print(f"BM25 postings: {summary['compression_ratio']:.1%} of raw int32 (doc id + tf)")
    return summary


if __name__ == "__main__":
    main()
