"""Fuzz the loaders: edit fields and arrays of saved files, recompute the checksum, load and use each.

Every case runs in one subprocess (a crash there fails the test and names the case): it must either
be refused with ``CorruptIndexFile`` at load, or load and then search, add and delete correctly
(results only of live ids, pruned top-k equal to exhaustive, sketch estimates never negative).
Edits are deterministic: each array gets extreme and random in-range values, zeroing, a row
dropped, another dtype, a shuffle and removal; each metadata field gets values of every JSON type,
fields of nested objects too, also of the objects in a list (the inverted index's segments).
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from retrieval_files import (  # noqa: E402
    HNSW_KIND, INDEX_KIND, SKETCH_KIND, read, small_hnsw, small_inverted_index, small_sketch, write,
)

META_VALUES = [-1, 0, 1, 3, 2**31, 2**40, 2**70, -(2**70), 1.5, float("nan"), "x", None, True, [], {}, [[1, 2]]]
OTHER_DTYPE = {"i": np.float32, "u": np.int64, "f": np.float64, "b": np.int8}


def _array_edits(name: str, array: np.ndarray, rng) -> list:
    """(label, new array or None for removal) pairs for one array."""
    edits = [("removed", None), ("zeroed", np.zeros_like(array)),
             ("other dtype", array.astype(OTHER_DTYPE[array.dtype.kind]))]
    if array.ndim and array.shape[0]:
        edits.append(("last row dropped", array[:-1].copy()))
        shuffled = array.copy()
        rng.shuffle(shuffled)
        edits.append(("rows shuffled", shuffled))
    if array.size == 0:
        return edits
    if array.dtype == np.bool_:
        values = [True, False]
    elif array.dtype.kind == "f":
        values = [np.nan, np.inf, -1.0, 0.0, 1e30]
    else:
        info = np.iinfo(array.dtype)
        high = int(array.max())
        values = [info.min, info.max, -1, -2, 0, high + 1, high + 2] + rng.integers(
            max(info.min, -1), max(high, 1) + 1, 4).tolist()
    for value in values:
        for _ in range(2):
            edited = array.copy()
            position = tuple(int(rng.integers(0, size)) for size in array.shape)
            edited[position] = np.array(value).astype(array.dtype) if array.dtype.kind != "u" or value >= 0 else \
                np.array(value).astype(np.int64).astype(array.dtype)
            edits.append((f"one entry = {value}", edited))
    return edits


def _meta_edits(meta: dict) -> list:
    """(label, edited meta) pairs: every field (and every field of a nested object) set to each value, or removed."""
    edits = []
    for name, value in meta.items():
        paths = [(name,)]
        if isinstance(value, dict) and name != "rng_state":
            paths += [(name, inner) for inner in value]
        if isinstance(value, list) and value and all(isinstance(entry, dict) for entry in value):
            paths += [(name, i) for i in range(len(value))] + [(name, i, inner) for i, entry in enumerate(value)
                                                               for inner in entry]
        for path in paths:
            for new in META_VALUES + ["<removed>"]:
                edited = copy.deepcopy(meta)
                holder = edited
                for step in path[:-1]:
                    holder = holder[step]
                if new == "<removed>":
                    holder.pop(path[-1])
                else:
                    holder[path[-1]] = new
                edits.append((f"{'.'.join(map(str, path))} = {new!r}", edited))
    return edits


def _cases(path: Path, kind: str, out_dir: Path, rng) -> list:
    meta, arrays, version = read(path, kind)
    cases = []
    for name, array in arrays.items():
        for label, edited in _array_edits(name, array, rng):
            new_arrays = {n: a for n, a in arrays.items() if n != name}
            if edited is not None:
                new_arrays[name] = edited
            cases.append((f"{kind}: {name} {label}", meta, new_arrays))
    for label, edited_meta in _meta_edits(meta):
        cases.append((f"{kind}: {label}", edited_meta, arrays))
    manifest = []
    for i, (label, case_meta, case_arrays) in enumerate(cases):
        target = out_dir / f"{kind}-{i}"
        write(target, kind, version, case_meta, case_arrays)
        manifest.append([label, kind, str(target)])
    manifest.append([f"{kind}: unaltered", kind, str(path)])
    return manifest


def test_edited_files_are_refused_or_work_and_never_crash(tmp_path):
    rng = np.random.default_rng(20)
    manifest = []
    for builder, kind in ((small_hnsw, HNSW_KIND), (small_inverted_index, INDEX_KIND), (small_sketch, SKETCH_KIND)):
        original = tmp_path / kind
        builder(original)
        manifest += _cases(original, kind, tmp_path, rng)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    worker = Path(__file__).parent / "retrieval_fuzz_worker.py"
    run = subprocess.run([sys.executable, str(worker), str(manifest_path)], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).parent.parent)
    last = [line for line in run.stderr.splitlines() if line.startswith("running ")][-1:]
    assert run.returncode == 0, f"the worker died (code {run.returncode}) at {last}: {run.stderr[-2000:]}"
    reports = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(reports) == len(manifest)
    bad = [r for r in reports if r["outcome"] in ("wrong", "error")]
    assert not bad, f"{len(bad)} of {len(reports)} cases misbehaved, e.g. {bad[:5]}"
    outcomes = {r["case"]: r["outcome"] for r in reports}
    segment_cases = [o for c, o in outcomes.items() if c.startswith((f"{INDEX_KIND}: segment", f"{INDEX_KIND}: segments"))]
    assert segment_cases.count("refused") > 50  # every segment's arrays and fields were edited
    for kind in (HNSW_KIND, INDEX_KIND, SKETCH_KIND):  # the fuzz reaches both sides of the checks
        assert outcomes.pop(f"{kind}: unaltered") == "ok"
        of_kind = [o for c, o in outcomes.items() if c.startswith(kind)]
        assert of_kind.count("refused") > 20 and of_kind.count("ok") > 5
