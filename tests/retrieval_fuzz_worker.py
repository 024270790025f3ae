"""Load and use each file a manifest names; report one JSON line per file (run in a subprocess).

Usage: ``python retrieval_fuzz_worker.py MANIFEST``, where MANIFEST is a JSON list of
``[case_name, kind, path]``. For each case it prints ``{"case", "outcome", "detail"}`` with outcome
``refused`` (CorruptIndexFile at load), ``ok`` (loaded and every use behaved), ``wrong`` (loaded,
but a use broke an invariant) or ``error`` (any other exception). A crash kills the process; the
case being run is the last ``running`` line on stderr.
"""

import json
import sys

import numpy as np

from llmds_torch.errors import LLMDSError
from llmds_torch.retrieval import CountMinSketch, HNSW, InvertedIndex
from llmds_torch.retrieval.errors import CorruptIndexFile

WORDS = [f"w{i}" for i in range(40)] + ["unknown"]


def use_hnsw(path) -> str:
    index = HNSW.load(path)
    if len(index) == 0:
        return ""
    live = set(index.graph_tensors()["ids"][index.graph_tensors()["live"]].tolist())
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, index.dim)).astype(np.float32)
    k = min(5, len(index))
    allow = sorted(live)[: max(1, len(live) // 2)]
    results = [index.search(q, k)[0], index.search(q[0], k, ef=10**9)[0], index.search(q, k, allow=allow)[0],
               index.search(q, k, backend="torch")[0]]
    index.exact_filter_factor = 0.0  # the filtered graph search
    results += [index.search(q, k, allow=allow)[0], index.search(q, k, allow=allow, backend="torch")[0]]
    for ids in results:
        returned = set(ids.reshape(-1).tolist()) - {-1}
        if not returned <= live:
            return f"search returned ids {sorted(returned - live)[:5]} that are not live"
    index.add(rng.standard_normal((3, index.dim)).astype(np.float32))
    index.delete([sorted(live)[0]])
    index.search(q, min(5, len(index)))
    return ""


def use_inverted_index(path) -> str:
    index = InvertedIndex.load(path)
    queries = [["w0", "w1"], ["w2", "w7", "w7"], ["w30", "unknown"], "w0 w3 w5"]
    live = set(index._id_keys.tolist())
    for query in queries:
        pruned = index.search(query, 5, prune=True)
        exhaustive = index.search(query, 5, prune=False)
        if not (np.array_equal(pruned[0], exhaustive[0]) and np.array_equal(pruned[1], exhaustive[1])):
            return f"pruned top-k differs from exhaustive for {query!r}"
        if not set(pruned[0].tolist()) <= live or (pruned[1] < 0).any() or not np.isfinite(pruned[1]).all():
            return f"search for {query!r} returned deleted ids or bad scores"
    ids, _ = index.search_batch(queries, 7, parallel=False)
    if not set(ids.reshape(-1).tolist()) - {-1} <= live:
        return "batched search returned deleted ids"
    index.add([["w1", "w2"], ["w3"]])
    if live:
        index.delete([min(live)])
    before = index.search(["w1", "w3"], 3)
    index.optimize()  # merges every segment, dropping deleted documents
    after = index.search(["w1", "w3"], 3)
    if not (np.array_equal(before[0], after[0]) and np.allclose(before[1], after[1])):
        return "merging the segments changed a search"
    return ""


def use_sketch(path) -> str:
    with open(path, "rb") as f:
        sketch = CountMinSketch.from_bytes(f.read())
    keys = [1, 2, 3, "text", b"\x00bytes"]
    before = sketch.estimate(keys)
    if (before < 0).any():
        return "negative estimate"
    sketch.update(keys)
    if (sketch.estimate(keys) < before + 1).any():
        return "an update lowered an estimate"
    sketch.heavy_hitters(5)
    sketch.merge(CountMinSketch.from_bytes(sketch.to_bytes()))
    return ""


USES = {"hnsw": use_hnsw, "inverted_index": use_inverted_index, "count_min_sketch": use_sketch}


def main(manifest_path: str) -> None:
    with open(manifest_path) as f:
        cases = json.load(f)
    for name, kind, path in cases:
        print(f"running {name}", file=sys.stderr, flush=True)
        try:
            problem = USES[kind](path)
            outcome, detail = ("wrong", problem) if problem else ("ok", "")
        except CorruptIndexFile as exc:
            outcome, detail = "refused", str(exc)
        except LLMDSError as exc:  # a named error after loading (e.g. an add the loaded index refuses)
            outcome, detail = "ok", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any other exception is what the test looks for
            outcome, detail = "error", f"{type(exc).__name__}: {exc}"
        print(json.dumps({"case": name, "outcome": outcome, "detail": detail[:300]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
