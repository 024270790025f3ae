"""Loading refuses crafted files (valid checksum, wrong contents) with CorruptIndexFile naming the field.

Each case takes a small saved index, changes one thing the way an attacker or a buggy writer could,
recomputes the checksum, and checks that ``load`` refuses it by name. Also: HMAC-keyed files, and
search arguments too large to serve.
"""

import copy
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmds_torch.retrieval import CountMinSketch, HNSW, InvertedIndex, persist
from llmds_torch.retrieval.codec import decode_uvarint_numba
from llmds_torch.retrieval.errors import CorruptIndexFile, CorruptVarint, InvalidSearchParameter
sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from retrieval_files import (  # noqa: E402
    HNSW_KIND, INDEX_KIND, SKETCH_KIND, read, small_hnsw, small_inverted_index, small_sketch, write,
)


@pytest.fixture(scope="module")
def hnsw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hnsw") / "index.hnsw"
    return path, small_hnsw(path)


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bm25") / "index.bm25"
    return path, small_inverted_index(path)


@pytest.fixture(scope="module")
def sketch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cms") / "sketch.cms"
    return path, small_sketch(path)


def _altered(path, kind, tmp_path, change):
    meta, arrays, version = read(path, kind)
    meta, arrays = copy.deepcopy(meta), {name: a.copy() for name, a in arrays.items()}
    change(meta, arrays)
    out = tmp_path / "altered"
    write(out, kind, version, meta, arrays)
    return out


def _assert_refused_by_field(load, path, kind, tmp_path, case):
    """``path`` altered by ``case`` = (change, field): ``load`` refuses it with CorruptIndexFile naming the field."""
    change, field = case
    with pytest.raises(CorruptIndexFile, match=field):
        load(_altered(path, kind, tmp_path, change))


# ----------------------------------------------------------------------------------------------- HNSW
def _live_slot_with_level(arrays, level):
    return int(np.flatnonzero(arrays["live"] & (arrays["levels"] >= level))[0])


def _set(name, index, value):
    def change(meta, arrays):
        arrays[name][index] = value
    return change


def _meta(name, value):
    def change(meta, arrays):
        meta[name] = value
    return change


def _upper_link_to_low_level(meta, arrays):
    slot = _live_slot_with_level(arrays, 1)
    low = int(np.flatnonzero(arrays["live"] & (arrays["levels"] == 0))[0])
    arrays["upper_links"][arrays["upper_offset"][slot], 0] = low


def _link_to_free_slot(meta, arrays):
    slot = _live_slot_with_level(arrays, 0)
    arrays["links0"][slot, 0] = int(np.flatnonzero(~arrays["live"])[0])


def _same_ids(meta, arrays):
    arrays["ids"][arrays["live"]] = 7
    meta["next_id"] = 8


def _upper_offset_past_end(meta, arrays):
    slot = _live_slot_with_level(arrays, 1)
    arrays["upper_offset"][slot] = arrays["upper_links"].shape[0] + 5


def _overlapping_upper_rows(meta, arrays):
    a, b = np.flatnonzero(arrays["upper_rows"] > 0)[:2]
    arrays["upper_offset"][b] = arrays["upper_offset"][a]


def _level_above_rows(meta, arrays):
    slot = int(np.flatnonzero(arrays["live"] & (arrays["upper_rows"] == 0))[0])
    arrays["levels"][slot] = 1


HNSW_CASES = {
    "link out of range": (lambda m, a: _set("links0", (_live_slot_with_level(a, 0), 0), a["ids"].size + 5)(m, a),
                          "links0"),
    "link below -1": (lambda m, a: _set("links0", (_live_slot_with_level(a, 0), 0), -7)(m, a), "links0"),
    "link after padding": (lambda m, a: _set("links0", (_live_slot_with_level(a, 0), -1), 0)(m, a), "links0"),
    "link to a free slot": (_link_to_free_slot, "links0"),
    "upper link out of range": (lambda m, a: _set("upper_links", (0, 0), 10**6)(m, a), "upper_links"),
    "upper link to a lower level": (_upper_link_to_low_level, "upper_links"),
    "upper offset past the rows": (_upper_offset_past_end, "upper_offset"),
    "overlapping upper rows": (_overlapping_upper_rows, "upper_offset"),
    "level above its rows": (_level_above_rows, "levels"),
    "entry out of range": (lambda m, a: _meta("entry", a["ids"].size + 3)(m, a), "entry"),
    "entry -1 with live points": (_meta("entry", -1), "entry"),
    "entry a free slot": (lambda m, a: _meta("entry", int(np.flatnonzero(~a["live"])[0]))(m, a), "entry"),
    "entry a string": (_meta("entry", "3"), "entry"),
    "entry a bool": (_meta("entry", True), "entry"),
    "max level too high": (_meta("max_level", 50), "max_level"),
    "max level below the entry's": (_meta("max_level", 0), "max_level"),
    "every id the same": (_same_ids, "ids"),
    "negative id": (lambda m, a: _set("ids", _live_slot_with_level(a, 0), -5)(m, a), "ids"),
    "next id below an id": (_meta("next_id", 3), "next_id"),
    "vector NaN": (_set("vectors", (1, 1), np.nan), "vectors"),
    "links of the wrong dtype": (lambda m, a: a.update(links0=a["links0"].astype(np.int64)), "links0"),
    "missing array": (lambda m, a: a.pop("levels"), "levels"),
    "metric unknown": (_meta("metric", "hamming"), "metric"),
    "dim a float": (_meta("dim", 6.0), "dim"),
    "rng state garbage": (_meta("rng_state", {"bit_generator": "PCG64", "state": 5}), "rng_state"),
    "ef_search zero": (_meta("ef_search", 0), "ef_search"),
}


@pytest.mark.parametrize("case", list(HNSW_CASES))
def test_crafted_hnsw_file_is_refused_by_field(hnsw_file, tmp_path, case):
    _assert_refused_by_field(HNSW.load, hnsw_file[0], HNSW_KIND, tmp_path, HNSW_CASES[case])


def _empty_hnsw_file(tmp_path, dim, M):
    HNSW(6, M=3).save(tmp_path / "empty")

    def change(meta, arrays):
        meta.update(dim=dim, M=M)
        arrays.update(vectors=np.zeros((0, dim), np.float32), links0=np.zeros((0, 2 * M), np.int32),
                      upper_links=np.zeros((0, M), np.int32))
    return _altered(tmp_path / "empty", HNSW_KIND, tmp_path, change)


@pytest.mark.parametrize("dim, M, field", [(6, 2**20, "M"), (2**40, 3, "dim")])
def test_empty_file_describing_a_huge_index_is_refused(tmp_path, dim, M, field):
    with pytest.raises(CorruptIndexFile, match=field):
        HNSW.load(_empty_hnsw_file(tmp_path, dim, M))


def test_loading_allocates_only_what_the_file_holds(tmp_path, hnsw_file):
    empty = HNSW.load(_empty_hnsw_file(tmp_path, 6, 2**12))  # within the limits, zero points
    assert len(empty) == 0 and sum(t.numel() for t in empty.graph_tensors().values()) == 0
    index = HNSW.load(hnsw_file[0])
    assert index.stats()["capacity"] == index.stats()["n_slots"]


def test_valid_hnsw_file_loads_and_searches_as_saved(hnsw_file):
    path, original = hnsw_file
    loaded = HNSW.load(path)
    q = np.random.default_rng(5).standard_normal((7, 6)).astype(np.float32)
    for got, want in zip(loaded.search(q, 5), original.search(q, 5)):
        assert torch.equal(got, want)
    loaded.add(q)  # the loaded graph grows like the original
    assert len(loaded) == len(original) + 7


# ------------------------------------------------------------------------------------ InvertedIndex
def _slot_ids_repeat(meta, arrays):
    live = np.flatnonzero(arrays["live"])
    arrays["slot_ids"][live[1]] = arrays["slot_ids"][live[0]]


def _doc_length_negative(meta, arrays):
    arrays["doc_lengths"][np.flatnonzero(arrays["live"])[0]] = -4


def _doc_length_off_by_one(meta, arrays):
    arrays["doc_lengths"][np.flatnonzero(arrays["live"])[0]] += 1


def _block_maxima_zeroed(meta, arrays):
    assert arrays["segment0.postings.block_max_impact"].size > 0
    arrays["segment0.postings.block_max_impact"][:] = 0


def _vocab_repeats(meta, arrays):
    offsets, blob = arrays["vocab_offsets"], arrays["vocab_bytes"].tobytes()
    terms = [blob[offsets[i]:offsets[i + 1]] for i in range(offsets.size - 1)]
    terms[1] = terms[0]
    arrays["vocab_bytes"] = np.frombuffer(b"".join(terms), np.uint8).copy()
    arrays["vocab_offsets"] = np.concatenate([[0], np.cumsum([len(t) for t in terms])]).astype(np.int64)


def _segment_field(segment, name, value):
    def change(meta, arrays):
        meta["segments"][segment][name] = value
    return change


def _tokenizer_field(name, value):
    def change(meta, arrays):
        meta["tokenizer"][name] = value
    return change


INDEX_CASES = {
    "negative slot id": (lambda m, a: _set("slot_ids", int(np.flatnonzero(a["live"])[0]), -2)(m, a), "slot_ids"),
    "slot ids repeat": (_slot_ids_repeat, "slot_ids"),
    "negative document length": (_doc_length_negative, "doc_lengths"),
    "document length off by one": (_doc_length_off_by_one, "doc_lengths"),
    "block maxima zeroed": (_block_maxima_zeroed, "block_max_impact"),
    "huge num_postings": (_segment_field(0, "num_postings", 2**40), "num_postings"),
    "segment average length changed": (_segment_field(1, "avgdl", 3.0), "segment1.postings.block_max_impact"),
    "segment average length zero": (_segment_field(0, "avgdl", 0.0), "avgdl"),
    "segments cover too few documents": (_segment_field(1, "num_docs", 19), "segments"),
    "segment entry a number": (lambda m, a: m["segments"].__setitem__(0, 5), "segments"),
    "segment arrays missing": (lambda m, a: a.pop("segment1.terms"), "segment1.terms"),
    "segment term map descends": (lambda m, a: a.__setitem__("segment0.terms", a["segment0.terms"][::-1].copy()),
                                  "segment0.terms"),
    "segment term map past the vocabulary": (lambda m, a: _set("segment1.terms", -1, 10**6)(m, a), "segment1.terms"),
    "k1 a string": (_meta("k1", "1.5"), "k1"),
    "b out of range": (_meta("b", 3.0), "b"),
    "block size a float": (_meta("block_size", 4.0), "block_size"),
    "method unknown": (_meta("method", "tfidf"), "method"),
    "lowercase a string": (_tokenizer_field("lowercase", "yes"), "lowercase"),
    "stopwords not strings": (_tokenizer_field("stopwords", [1, 2]), "stopwords"),
    "next id below an id": (_meta("next_id", 1), "next_id"),
    "vocabulary repeats a term": (_vocab_repeats, "vocab"),
    "vocabulary offsets past the bytes": (lambda m, a: _set("vocab_offsets", -1, 10**6)(m, a), "vocab_offsets"),
    "postings stream cut": (lambda m, a: a.update({"segment1.postings.data": a["segment1.postings.data"][:-3].copy()}),
                            "segment1.postings"),
    "doc lengths of the wrong dtype": (lambda m, a: a.update(doc_lengths=a["doc_lengths"].astype(np.int32)),
                                       "doc_lengths"),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_crafted_inverted_index_file_is_refused_by_field(index_file, tmp_path, case):
    _assert_refused_by_field(InvertedIndex.load, index_file[0], INDEX_KIND, tmp_path, INDEX_CASES[case])


def test_inverted_index_file_with_every_document_deleted_loads_empty(index_file, tmp_path):
    """Deleted documents keep their postings in the file until their segment is merged; search skips them."""
    loaded = InvertedIndex.load(_altered(index_file[0], INDEX_KIND, tmp_path, lambda m, a: a["live"].fill(False)))
    assert len(loaded) == 0
    assert loaded.search(["w0", "w1"], 5)[0].size == 0
    assert (loaded.search_batch([["w0"], ["w2"]], 3)[0] == -1).all()


def test_older_inverted_index_layout_is_refused_by_version(index_file, tmp_path):
    meta, arrays, version = read(index_file[0], INDEX_KIND)
    write(tmp_path / "old", INDEX_KIND, version - 1, meta, arrays)
    with pytest.raises(CorruptIndexFile, match=f"version {version - 1}"):
        InvertedIndex.load(tmp_path / "old")


def test_valid_inverted_index_file_loads_and_searches_as_saved(index_file):
    path, original = index_file
    loaded = InvertedIndex.load(path)
    queries = [["w0", "w1", "w5"], ["w2"], ["w3", "w30"]]
    for got, want in zip(loaded.search_batch(queries, 5), original.search_batch(queries, 5)):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------- CountMinSketch
def _counter(value):
    def change(meta, arrays):
        arrays["table"][1, 3] = value
    return change


SKETCH_CASES = {
    "negative counter": (_counter(-5), "table"),
    "counter above the total": (_counter(10**9), "total"),
    "negative total": (_meta("total", -1), "total"),
    "total a string": (_meta("total", "7"), "total"),
    "width disagrees with the table": (_meta("width", 2**40), "width"),
    "table of the wrong dtype": (lambda m, a: a.update(table=a["table"].astype(np.float64)), "table"),
    "candidate of an unknown kind": (_meta("candidates", [["f", 1.5]]), "candidates"),
    "conservative a number": (_meta("conservative", 1), "conservative"),
}


@pytest.mark.parametrize("case", list(SKETCH_CASES))
def test_crafted_sketch_file_is_refused_by_field(sketch_file, tmp_path, case):
    def load(path):
        return CountMinSketch.from_bytes(path.read_bytes())

    _assert_refused_by_field(load, sketch_file[0], SKETCH_KIND, tmp_path, SKETCH_CASES[case])


def test_valid_sketch_file_round_trips(sketch_file):
    path, original = sketch_file
    loaded = CountMinSketch.from_bytes(path.read_bytes())
    np.testing.assert_array_equal(loaded.table, original.table)
    assert loaded.total == original.total and loaded.heavy_hitters(5) == original.heavy_hitters(5)


# ------------------------------------------------------------------------------------------- HMAC
def test_keyed_files_load_only_with_their_key(tmp_path, hnsw_file, index_file, sketch_file):
    key, other = b"k" * 32, b"x" * 32
    HNSW.load(hnsw_file[0]).save(tmp_path / "h", key=key)
    InvertedIndex.load(index_file[0]).save(tmp_path / "i", key=key)
    sketch_bytes = CountMinSketch.from_bytes(sketch_file[0].read_bytes()).to_bytes(key=key)
    assert len(HNSW.load(tmp_path / "h", key=key)) == len(hnsw_file[1])
    assert len(InvertedIndex.load(tmp_path / "i", key=key)) == len(index_file[1])
    assert CountMinSketch.from_bytes(sketch_bytes, key=key).total == sketch_file[1].total
    with pytest.raises(CorruptIndexFile, match="HMAC"):
        HNSW.load(tmp_path / "h", key=other)
    with pytest.raises(CorruptIndexFile, match="key"):
        InvertedIndex.load(tmp_path / "i")  # a keyed file needs its key
    with pytest.raises(CorruptIndexFile, match="HMAC"):
        CountMinSketch.from_bytes(sketch_file[0].read_bytes(), key=key)  # an unkeyed file fails a keyed load


def _rewrite_header(data: bytes, edit) -> bytes:
    """``data`` (a persist file) with its header bytes replaced by ``edit(header_bytes)``, checksum valid."""
    prefix = struct.Struct("<8sIQ")
    magic, version, header_len = prefix.unpack_from(data, 0)
    header = edit(data[prefix.size:prefix.size + header_len])
    body = prefix.pack(magic, version, len(header)) + header + data[prefix.size + header_len:-32]
    return body + hashlib.sha256(body).digest()


def _edit_json(edit):
    def apply(header: bytes) -> bytes:
        parsed = json.loads(header)
        edit(parsed)
        return json.dumps(parsed).encode()
    return apply


def test_header_lies_are_refused():
    """Header entries whose shape, offset or size do not match the payload, or booleans other than 0/1."""
    good = persist.dumps("x", 1, {"a": np.arange(4, dtype=np.int64), "m": np.array([True, False])})
    assert persist.loads(good, "x").arrays["a"].tolist() == [0, 1, 2, 3]
    raw = bytearray(good[:-32])
    raw[-2] = 2  # the boolean array is the payload's last two bytes
    with pytest.raises(CorruptIndexFile, match="boolean"):
        persist.loads(bytes(raw) + hashlib.sha256(bytes(raw)).digest(), "x")
    lies = [("shape", [2**40]), ("shape", [2]), ("shape", [-4]), ("shape", "4"), ("shape", [True] * 4),
            ("offset", -8), ("offset", 10**6), ("nbytes", 2**62), ("dtype", "|O"), ("name", 3)]
    for field, value in lies:
        def edit(header):
            header["arrays"][0][field] = value
        with pytest.raises(CorruptIndexFile, match="array"):
            persist.loads(_rewrite_header(good, _edit_json(edit)), "x")
    for edit in (lambda h: h.update(meta=[]), lambda h: h.update(kind_version="1"), lambda h: h.update(arrays={}),
                 lambda h: h["arrays"].append(dict(h["arrays"][0]))):
        with pytest.raises(CorruptIndexFile):
            persist.loads(_rewrite_header(good, _edit_json(edit)), "x")
    for edit in (lambda h: h.replace(b'"kind_version": 1', b'"kind_version": ' + b"9" * 5000),  # past int digits
                 lambda h: b"[" * 100_000 + b"]" * 100_000, lambda h: b"\xff" + h):
        with pytest.raises(CorruptIndexFile, match="header"):
            persist.loads(_rewrite_header(good, edit), "x")


# --------------------------------------------------------------------------------- search arguments
def test_any_ef_is_served_and_huge_k_refused_by_name(hnsw_file):
    index = HNSW.load(hnsw_file[0])
    q = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    for got, want in zip(index.search(q, 5, ef=2**40), index.search(q, 5, ef=len(index))):
        assert torch.equal(got, want)
    index.ef_search = 2**40
    assert index.search(q[0], 5)[0].shape == (1, 5)
    with pytest.raises(InvalidSearchParameter):
        index.search(q, 2**40)


def test_inverted_index_serves_any_k_and_refuses_huge_padding(index_file):
    index = InvertedIndex.load(index_file[0])
    for got, want in zip(index.search(["w0", "w1"], 2**40), index.search(["w0", "w1"], len(index))):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidSearchParameter, match="pad"):
        index.search_batch([["w0"], ["w1"]], 2**40)


def test_varint_count_beyond_the_stream_is_refused_before_allocating():
    with pytest.raises(CorruptVarint):
        decode_uvarint_numba(b"\x01\x02", count=2**40)
    with pytest.raises(CorruptVarint):
        decode_uvarint_numba(b"\x01\x02", count=-1)
    assert decode_uvarint_numba(b"\x01\x02", count=2).tolist() == [1, 2]


def test_offsets_past_2_to_the_63_are_refused(index_file, tmp_path):
    """A uint64 term offset that reads as a negative int64 must not index the stream from its end."""
    def change(meta, arrays):
        starts = arrays["segment0.postings.term_byte_start"].astype(np.uint64)
        starts[0] = 2**64 - 10**9
        arrays["segment0.postings.term_byte_start"] = starts
        arrays["segment0.postings.block_byte_start"] = arrays["segment0.postings.block_byte_start"].astype(np.uint64)
    with pytest.raises(CorruptIndexFile, match="postings"):
        InvertedIndex.load(_altered(index_file[0], INDEX_KIND, tmp_path, change))
