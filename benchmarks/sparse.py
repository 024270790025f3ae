"""Sparse retrieval benchmarks, side by side with bm25s in one run on the same tokens.

1. BM25 on a synthetic corpus with Zipf-distributed terms (50k documents by default) and on the
   Python standard library's docstrings: indexing time, queries/s single and batched, index bytes,
   top-10 agreement with bm25s (method "lucene", both its numpy and numba backends).
   Goals: compressed postings <= 40% of raw int32 (doc id + tf) postings, counting the varint stream,
   the term directory and the block metadata (``InvertedIndex.stats``); queries/s >= bm25s. Our
   index's impact cache (decoded postings of the most frequent terms, default budget 16 MiB) is
   reported apart, as ``cache_bytes``: it is not part of the index nor of the compression ratio.
2. Codec decode throughput in integers/s (the vectorized numpy decoder and the numba one).
3. Count-Min Sketch batched updates/s, against exact counting with collections.Counter.
4. With ``--updates``: the cost of adding and deleting 1 / 100 / 1,000 documents on a ~50k-document
   index of real passages (``benchmarks.text_corpus``; Zipf documents when it is not cached), with
   segments against the previous design that re-encoded the whole index on every change (its code
   taken from git at ``--previous-rev`` and loaded beside today's), each change followed by one
   search (which rebuilds what search derives from the statistics); and search speed over the
   segments that adding in batches of 1,000 leaves, over one merged segment and in bm25s. First, the
   whole corpus indexed at once, saved and loaded, and the first delete after the load, against the
   previous design in alternated rounds (medians and per-round ratios), with index and file bytes.

Part 1 also times the previous design's index (``--previous-rev``) in the same run when git has it.

Run: ``python -m benchmarks.sparse`` (full sizes), ``python -m benchmarks.sparse --quick`` or
``python -m benchmarks.sparse --updates [--quick]``.
"""

from __future__ import annotations

import os

# numba's OpenMP layer spins 200 ms after each parallel loop by default; on a machine with few cores
# that made every batched call (ours and bm25s's numba backend alike) cost ~8 ms. Set before numba loads.
os.environ.setdefault("KMP_BLOCKTIME", "0")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import hardware, print_table, write_results  # noqa: E402
from llmds_torch.retrieval.varint import decode_uvarint, decode_uvarint_numba, encode_uvarint  # noqa: E402
from llmds_torch.retrieval.count_min_sketch import CountMinSketch  # noqa: E402
from llmds_torch.retrieval.inverted_index import InvertedIndex  # noqa: E402
from llmds_torch.retrieval.stdlib_corpus import stdlib_documents  # noqa: E402
from llmds_torch.retrieval.tokenizer import Tokenizer  # noqa: E402


PREVIOUS_REV = "17f8e91"  # the last commit whose InvertedIndex re-encoded everything on add / delete


def previous_inverted_index(rev: str, folder: Path):
    """The ``InvertedIndex`` class as of git revision ``rev``, loaded beside today's (its ``inverted_index``,
    ``inverted_index_file`` and ``_bm25_search`` modules under other names in the same package); None when git
    cannot show it."""
    root = Path(__file__).resolve().parent.parent
    names = ("_bm25_search", "inverted_index_file", "inverted_index")
    sources = {}
    for name in names:
        shown = subprocess.run(["git", "show", f"{rev}:llmds_torch/retrieval/{name}.py"], cwd=root,
                               capture_output=True, text=True)
        if shown.returncode != 0:
            return None
        sources[name] = shown.stdout
        for other in names:
            sources[name] = sources[name].replace(f"from .{other} import", f"from .{other}_previous import")
    module = None
    for name in names:
        path = folder / f"{name}_previous.py"
        path.write_text(sources[name])
        spec = importlib.util.spec_from_file_location(f"llmds_torch.retrieval.{name}_previous", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.InvertedIndex


def zipf_ranks(rng, n, vocab_size, exponent=1.07):
    """``n`` term ranks in ``[0, vocab_size)`` with P(rank r) proportional to 1 / (r + 1) ** exponent."""
    weights = 1.0 / np.arange(1, vocab_size + 1) ** exponent
    return rng.choice(vocab_size, size=n, p=weights / weights.sum())


def zipf_corpus(rng, num_docs, vocab_size, min_len=20, max_len=150):
    lengths = rng.integers(min_len, max_len + 1, num_docs)
    ranks = zipf_ranks(rng, int(lengths.sum()), vocab_size)
    names = np.array([f"t{r}" for r in range(vocab_size)], dtype=object)
    tokens = names[ranks]
    bounds = np.cumsum(lengths)
    return [tokens[b - n:b].tolist() for b, n in zip(bounds, lengths)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bm25s_bytes(retriever) -> int:
    return int(sum(np.asarray(a).nbytes for a in retriever.scores.values() if hasattr(a, "nbytes")))


def top10_agreement(ours_ids, theirs_ids) -> float:
    """Mean fraction of bm25s's top-10 ids that our top-10 also holds (ties can differ)."""
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / max(1, len(b)) for a, b in
                          zip(ours_ids, theirs_ids)]))


def bench_bm25(name, corpus, queries, k=10, single_queries=None, previous=None):
    import bm25s

    single_queries = single_queries or queries
    rows = []
    engines = [("llmds InvertedIndex", InvertedIndex)] + ([("llmds previous", previous)] if previous else [])
    for engine, cls in engines:
        index, index_s = timed(lambda: cls("lucene"))
        _, index_s = timed(lambda: index.add(corpus))
        index.search_batch(queries[:8], k)  # load the compiled loops before timing
        index.search(queries[0], k)
        engine_stats = index.stats()
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "index")
            cls.load(Path(tmp) / "index")  # compile the checks before timing
            _, load_s = timed(lambda: cls.load(Path(tmp) / "index"))
        (engine_ids, _), batch_s = timed(lambda: index.search_batch(queries, k))
        _, batch_exhaustive_s = timed(lambda: index.search_batch(queries, k, prune=False))
        _, single_s = timed(lambda: [index.search(q, k) for q in single_queries])
        rows.append({"corpus": name, "engine": engine, "index_s": index_s, "load_s": load_s,
                     "qps_single": len(single_queries) / single_s, "qps_batched": len(queries) / batch_s,
                     "qps_batched_no_pruning": len(queries) / batch_exhaustive_s,
                     "index_bytes": engine_stats["index_bytes"], "cache_bytes": engine_stats["impact_cache_bytes"],
                     "postings_vs_raw_int32": engine_stats["compression_ratio"], "top10_agreement": 1.0})
        if cls is InvertedIndex:
            ours_ids, stats = engine_ids, engine_stats
        else:
            rows[-1]["top10_agreement"] = top10_agreement(ours_ids, engine_ids)

    for backend in ("numpy", "numba"):
        retriever = bm25s.BM25(method="lucene", backend=backend)
        _, their_index_s = timed(lambda: retriever.index(corpus, show_progress=False))
        retriever.retrieve(queries[:8], k=k, show_progress=False, n_threads=0)  # compile / warm up
        (their_ids, _), their_batch_s = timed(
            lambda: retriever.retrieve(queries, k=k, show_progress=False, n_threads=0))
        _, their_single_s = timed(
            lambda: [retriever.retrieve([q], k=k, show_progress=False) for q in single_queries])
        rows.append({"corpus": name, "engine": f"bm25s ({backend})", "index_s": their_index_s, "load_s": float("nan"),
                     "qps_single": len(single_queries) / their_single_s, "qps_batched": len(queries) / their_batch_s,
                     "qps_batched_no_pruning": float("nan"), "index_bytes": bm25s_bytes(retriever),
                     "cache_bytes": 0, "postings_vs_raw_int32": float("nan"), "top10_agreement": top10_agreement(ours_ids, their_ids)})
    return rows, stats


def _timed_changes(index, batches, change, query, k=10) -> tuple[float, float, float]:
    """Mean seconds of ``change(index, batch)`` over ``batches``, mean of it followed by one search, and the
    slowest change with its search; the index returns to its state before."""
    before = index.snapshot()
    change_s, with_search_s = [], []
    for batch in batches:
        start = time.perf_counter()
        change(index, batch)
        middle = time.perf_counter()
        index.search(query, k)
        change_s.append(middle - start)
        with_search_s.append(time.perf_counter() - start)
    index.restore(before)
    return float(np.mean(change_s)), float(np.mean(with_search_s)), float(np.max(with_search_s))


def bench_updates(corpus, queries, previous, quick: bool, k=10):
    """Add / delete costs with segments and with the previous design, and search over segments."""
    import bm25s

    rng = np.random.default_rng(1)
    sizes = (1, 100, 1000)
    base_docs, spare = corpus[:-max(sizes) - 1], corpus[-max(sizes) - 1:]  # every add adds spare documents anew
    update_rows, engines = [], [("segments", InvertedIndex)] + ([("previous (re-encode all)", previous)]
                                                                 if previous else [])
    for engine, cls in engines:
        index = cls("lucene")
        index.add(base_docs)
        index.search(queries[0], k)
        index.delete([0])  # compile the change paths before timing
        index.add([spare[0]])
        index.search(queries[0], k)
        for size in sizes:
            repeats = (3 if size == 1000 else 5) if cls is previous else (40 if size == 1 else 20 if size == 100 else 5)
            repeats = min(repeats, 3) if quick else repeats
            adds = [spare[1:1 + size]] * repeats
            add_s, add_search_s, add_worst_s = _timed_changes(index, adds, lambda ix, b: ix.add(b), queries[1], k)
            ids = np.sort(rng.choice(np.arange(1, len(base_docs)), repeats * size, replace=False))
            deletes = [ids[i * size:(i + 1) * size] for i in range(repeats)]
            del_s, del_search_s, del_worst_s = _timed_changes(index, deletes, lambda ix, b: ix.delete(b), queries[1], k)
            update_rows.append({"engine": engine, "index_docs": len(index), "batch": size, "repeats": repeats,
                                "add_ms": 1e3 * add_s, "add_then_search_ms": 1e3 * add_search_s,
                                "add_worst_ms": 1e3 * add_worst_s, "delete_ms": 1e3 * del_s,
                                "delete_then_search_ms": 1e3 * del_search_s, "delete_worst_ms": 1e3 * del_worst_s})
    for row in update_rows:
        if previous and row["engine"] == "segments":
            base = next(r for r in update_rows if r["engine"] != "segments" and r["batch"] == row["batch"])
            for name in ("add_ms", "add_then_search_ms", "delete_ms", "delete_then_search_ms"):
                row[f"{name}_speedup"] = base[name] / row[name]

    search_rows = []
    segmented = InvertedIndex("lucene")
    for i in range(0, len(base_docs), 1000):
        segmented.add(base_docs[i:i + 1000])
    merged = InvertedIndex("lucene")
    merged.add(base_docs)
    rebuilt = InvertedIndex("lucene")
    for i in range(0, len(base_docs), 1000):
        rebuilt.add(base_docs[i:i + 1000])
    rebuilt.optimize()
    single = queries[:len(queries) // 2]
    engines = [("segments (batches of 1,000)", segmented), ("one segment (added at once)", merged),
               ("one segment (optimize())", rebuilt)]
    if previous:
        engines.append(("previous (one index)", previous("lucene")))
        engines[-1][1].add(base_docs)
    for name, index in engines:
        index.search_batch(queries[:8], k)
        index.search(queries[0], k)
        _, batch_s = timed(lambda: index.search_batch(queries, k))
        _, single_s = timed(lambda: [index.search(q, k) for q in single])
        search_rows.append({"engine": f"llmds {name}", "segments": getattr(index, "num_segments", 1),
                            "qps_single": len(single) / single_s, "qps_batched": len(queries) / batch_s})
    retriever = bm25s.BM25(method="lucene", backend="numba")
    retriever.index(base_docs, show_progress=False)
    retriever.retrieve(queries[:8], k=k, show_progress=False, n_threads=0)
    _, batch_s = timed(lambda: retriever.retrieve(queries, k=k, show_progress=False, n_threads=0))
    _, single_s = timed(lambda: [retriever.retrieve([q], k=k, show_progress=False) for q in single])
    search_rows.append({"engine": "bm25s (numba)", "segments": 1, "qps_single": len(single) / single_s,
                        "qps_batched": len(queries) / batch_s})
    for row in search_rows:
        row["qps_single_vs_bm25s"] = row["qps_single"] / search_rows[-1]["qps_single"]
        row["qps_batched_vs_bm25s"] = row["qps_batched"] / search_rows[-1]["qps_batched"]
    return update_rows, search_rows


def bench_bulk(corpus, previous, rounds: int) -> list[dict]:
    """Indexing ``corpus`` at once, saving, loading, and the first delete after a load (which derives the touched
    segment's forward index), segments against the previous design, alternated in ``rounds`` rounds (which goes
    first alternates too); medians."""
    engines = [("segments", InvertedIndex)] + ([("previous (one index)", previous)] if previous else [])
    times: dict = {engine: {"index_s": [], "load_s": [], "first_delete_after_load_s": []} for engine, _ in engines}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cls in (cls for _, cls in engines):  # compile every path before timing
            warm = cls("lucene")
            warm.add(corpus[:50])
            warm.save(Path(tmp) / "warm")
            cls.load(Path(tmp) / "warm").delete([0])
        for round_ in range(rounds):
            for engine, cls in (engines if round_ % 2 == 0 else engines[::-1]):  # neither always runs first
                index = loaded = None
                gc.collect()  # the previous round's indexes are gone before timing
                index = cls("lucene")
                _, index_s = timed(lambda: index.add(corpus))
                path = Path(tmp) / engine.split()[0]
                index.save(path)
                sizes[engine] = index.stats()["index_bytes"], path.stat().st_size
                loaded, load_s = timed(lambda: cls.load(path))
                _, delete_s = timed(lambda: loaded.delete([1]))
                sizes[engine] += (loaded.stats()["index_bytes"],)
                for name, value in (("index_s", index_s), ("load_s", load_s), ("first_delete_after_load_s", delete_s)):
                    times[engine][name].append(value)
    rows = []
    for engine, _ in engines:
        row = {"engine": engine, "documents": len(corpus), "rounds": rounds}
        row.update({name: float(np.median(values)) for name, values in times[engine].items()})
        row["index_bytes"], row["file_bytes"], row["index_bytes_after_a_delete"] = sizes[engine]
        rows.append(row)
    if previous:
        for name in ("index_s", "load_s", "index_bytes"):
            rows[0][f"{name}_vs_previous"] = rows[0][name] / rows[1][name]
        per_round = [a / b for a, b in zip(times["segments"]["load_s"], times["previous (one index)"]["load_s"])]
        rows[0]["load_ratio_per_round"] = [round(r, 3) for r in per_round]
        per_round = [a / b for a, b in zip(times["segments"]["index_s"], times["previous (one index)"]["index_s"])]
        rows[0]["index_ratio_per_round"] = [round(r, 3) for r in per_round]
    return rows


def updates_main(args) -> None:
    from benchmarks import text_corpus

    tokenizer = Tokenizer()
    n = 5_000 if args.quick else 51_000
    cached = list(text_corpus.CACHE_DIR.glob("corpus_51000_*.json"))
    if cached:
        import json

        texts = json.loads(cached[0].read_text(encoding="utf-8"))[:n]
        corpus_name = f"real passages ({cached[0].name})"
    else:
        texts = [" ".join(doc) for doc in zipf_corpus(np.random.default_rng(0), n, 200_000)]
        corpus_name = "zipf"
    corpus = [tokenizer(text) for text in texts]
    rng = np.random.default_rng(0)
    vocab = sorted({t for doc in corpus[:2000] for t in doc})
    queries = [list(dict.fromkeys(rng.choice(vocab, int(rng.integers(2, 5))).tolist())) for _ in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        previous = previous_inverted_index(args.previous_rev, Path(tmp))
        bulk_rows = bench_bulk(corpus, previous, 2 if args.quick else 5)
        update_rows, search_rows = bench_updates(corpus, queries, previous, args.quick)
    print(f"\nindex {len(corpus)} documents at once, save, load, first delete after the load; seconds (median of "
          f"{bulk_rows[0]['rounds']} alternated rounds)")
    print_table(bulk_rows)
    print(f"\nadd / delete on {update_rows[0]['index_docs']} documents of {corpus_name}; ms per call "
          "(mean over repeats)")
    print_table(update_rows)
    print("\nsearch (lucene, k=10) over segments, one segment, bm25s")
    print_table(search_rows)
    write_results("sparse_updates" + ("_quick" if args.quick else ""), {
        "quick": args.quick, "corpus": corpus_name, "bulk": bulk_rows, "updates": update_rows, "search": search_rows,
        "previous_rev": args.previous_rev if previous else None,
        "setup": {"documents": len(corpus), "queries": len(queries), "hardware": hardware()["cpu"]},
    })


def bench_codec(rng, n):
    gaps = (rng.zipf(1.3, n) % (1 << 20)).astype(np.uint64)  # doc-gap-like: mostly small
    data = encode_uvarint(gaps)
    decode_uvarint_numba(encode_uvarint(gaps[:100]), 100)  # compile
    numpy_out, numpy_s = timed(lambda: decode_uvarint(data, count=n))
    numba_out, numba_s = timed(lambda: decode_uvarint_numba(data, n))
    assert np.array_equal(numpy_out, gaps) and np.array_equal(numba_out, gaps)
    _, encode_s = timed(lambda: encode_uvarint(gaps))
    return [{"integers": n, "bytes_per_integer": data.size / n, "encode_ints_per_s": n / encode_s,
             "decode_numpy_ints_per_s": n / numpy_s, "decode_numba_ints_per_s": n / numba_s}]


def bench_sketch(rng, n, batch):
    stream = zipf_ranks(rng, n, 1_000_000, exponent=1.1).astype(np.int64)
    rows = []
    for conservative in (False, True):
        sketch = CountMinSketch.from_error(1e-4, 1e-3, conservative=conservative)
        sketch.update(stream[:1000])  # compile
        sketch = CountMinSketch.from_error(1e-4, 1e-3, conservative=conservative)
        _, sketch_s = timed(lambda: [sketch.update(stream[i:i + batch]) for i in range(0, n, batch)])
        rows.append({"structure": f"CountMinSketch {'conservative' if conservative else 'plain'} "
                                  f"({sketch.width}x{sketch.depth})", "updates_per_s": n / sketch_s})
    counter = Counter()
    _, counter_s = timed(lambda: [counter.update(stream[i:i + batch].tolist()) for i in range(0, n, batch)])
    rows.append({"structure": "collections.Counter (exact)", "updates_per_s": n / counter_s})
    for row in rows:
        row["vs_counter"] = row["updates_per_s"] / rows[-1]["updates_per_s"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--updates", action="store_true", help="only the add / delete / segments benchmark")
    parser.add_argument("--previous-rev", default=PREVIOUS_REV,
                        help="git revision of the index to compare against (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.updates:
        return updates_main(args)
    rng = np.random.default_rng(0)
    num_docs, vocab, num_queries, num_single = (5_000, 20_000, 200, 100) if args.quick else (50_000, 200_000, 2_000, 1_000)
    stdlib_limit = 500 if args.quick else None

    corpus = zipf_corpus(rng, num_docs, vocab)
    known = sorted({t for doc in corpus for t in doc}, key=lambda t: int(t[1:]))
    known_set = set(known)
    queries = []
    while len(queries) < num_queries:
        terms = [f"t{r}" for r in zipf_ranks(rng, int(rng.integers(2, 6)), vocab)]
        terms = list(dict.fromkeys(t for t in terms if t in known_set))
        if terms:
            queries.append(terms)
    previous_folder = tempfile.TemporaryDirectory()
    previous = previous_inverted_index(args.previous_rev, Path(previous_folder.name))
    bm25_rows, zipf_stats = bench_bm25(f"zipf {num_docs // 1000}k docs", corpus, queries,
                                       single_queries=queries[:num_single], previous=previous)

    tokenizer = Tokenizer()
    docs = stdlib_documents(max_documents=stdlib_limit)
    stdlib_corpus = [tokenizer(f"{title} {text}") for title, text in docs]
    vocab_std = sorted({t for doc in stdlib_corpus for t in doc})
    std_queries = [list(dict.fromkeys(rng.choice(vocab_std, int(rng.integers(2, 5))).tolist()))
                   for _ in range(num_queries)]
    std_rows, std_stats = bench_bm25(f"stdlib {len(docs)} docs", stdlib_corpus, std_queries,
                                     single_queries=std_queries[:num_single], previous=previous)
    bm25_rows += std_rows
    for row in bm25_rows:
        for backend in ("numpy", "numba"):
            base = next(r for r in bm25_rows if r["corpus"] == row["corpus"] and r["engine"] == f"bm25s ({backend})")
            row[f"qps_batched_vs_bm25s_{backend}"] = row["qps_batched"] / base["qps_batched"]
            row[f"qps_single_vs_bm25s_{backend}"] = row["qps_single"] / base["qps_single"]
    print("\nBM25 (method lucene, k=10)")
    print_table(bm25_rows)

    codec_rows = bench_codec(rng, 1_000_000 if args.quick else 20_000_000)
    print("\nvarint codec")
    print_table(codec_rows)

    sketch_rows = bench_sketch(rng, 200_000 if args.quick else 5_000_000, 100_000)
    print("\nCount-Min Sketch batched updates (batches of 100k)")
    print_table(sketch_rows)

    ours = [r for r in bm25_rows if r["engine"] == "llmds InvertedIndex"]
    for row in ours:
        before = next((r for r in bm25_rows if r["corpus"] == row["corpus"] and r["engine"] == "llmds previous"), None)
        if before:
            for name in ("qps_single", "qps_batched", "qps_batched_no_pruning", "index_s", "load_s"):
                row[f"{name}_vs_previous"] = row[name] / before[name]
    others = [r for r in bm25_rows if r["engine"] != "llmds previous"]
    goals = {
        "compressed_postings_at_most_40pct_of_raw_int32": all(r["postings_vs_raw_int32"] <= 0.40 for r in ours),
        "qps_batched_at_least_bm25s": all(
            r["qps_batched"] >= max(b["qps_batched"] for b in others if b["corpus"] == r["corpus"] and b is not r)
            for r in ours),
        "qps_single_at_least_bm25s": all(
            r["qps_single"] >= max(b["qps_single"] for b in others if b["corpus"] == r["corpus"] and b is not r)
            for r in ours),
    }
    print("\ngoals:", goals)
    write_results("sparse" + ("_quick" if args.quick else ""), {
        "quick": args.quick, "previous_rev": args.previous_rev if previous else None, "bm25": bm25_rows, "zipf_index_stats": zipf_stats, "stdlib_index_stats": std_stats,
        "codec": codec_rows, "sketch": sketch_rows, "goals": goals,
        "setup": {"num_docs": num_docs, "vocab": vocab, "num_queries": num_queries, "single_queries": num_single,
                  "hardware": hardware()["cpu"]},
    })


if __name__ == "__main__":
    main()
