"""Small saved retrieval structures and a way to rewrite their files with a valid checksum.

Shared by the load tests and the load fuzz test (and its subprocess worker).
"""

from __future__ import annotations

import numpy as np

from llmds_torch.retrieval import CountMinSketch, HNSW, InvertedIndex, persist

HNSW_KIND, INDEX_KIND, SKETCH_KIND = "hnsw", "inverted_index", "count_min_sketch"
WORDS = [f"w{i}" for i in range(40)]


def small_hnsw(path) -> HNSW:
    """120 points of dim 6, M = 3 (several levels), 10 deleted (free slots with upper rows)."""
    rng = np.random.default_rng(0)
    index = HNSW(6, M=3, ef_construction=20, seed=1)
    index.add(rng.standard_normal((120, 6)).astype(np.float32))
    index.delete(np.arange(0, 30, 3))
    index.save(path)
    return index


def small_inverted_index(path) -> InvertedIndex:
    """60 documents over 40 words (Zipf-ish, so some terms span several blocks of 4) in two segments of 40 and 20
    documents, 6 deleted (their postings kept in the segments)."""
    rng = np.random.default_rng(1)
    docs = [[WORDS[min(int(w), 39)] for w in rng.zipf(1.3, size=rng.integers(1, 25))] for _ in range(60)]
    index = InvertedIndex(block_size=4, impact_cache_bytes=600)
    index.add(docs[:40])
    index.add(docs[40:])
    index.delete([3, 10, 11, 40, 41, 59])
    assert index.num_segments == 2 and index.stats()["dead_documents"] == 6
    index.save(path)
    return index


def small_sketch(path) -> CountMinSketch:
    sketch = CountMinSketch(50, 3, seed=2, heavy_hitter_capacity=8)
    rng = np.random.default_rng(2)
    sketch.update(rng.zipf(1.5, size=2000) % 1000)
    sketch.update(["text", b"\x00bytes", "text"])
    with open(path, "wb") as f:
        f.write(sketch.to_bytes())
    return sketch


def read(path, kind: str) -> tuple[dict, dict, int]:
    """A saved file's (meta, arrays, kind_version), checksum checked."""
    bundle = persist.load(path, kind)
    return bundle.meta, dict(bundle.arrays), bundle.kind_version


def write(path, kind: str, kind_version: int, meta: dict, arrays: dict) -> None:
    """Write a (possibly altered) file with a freshly computed, valid checksum."""
    persist.save(path, kind, kind_version, arrays, meta)
