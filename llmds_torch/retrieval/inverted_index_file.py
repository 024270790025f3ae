"""What an inverted-index file must satisfy before :meth:`InvertedIndex.load` uses it.

:func:`check_inverted_index_contents` refuses (``CorruptIndexFile`` naming the field) any file
that breaks the index's invariants; ``n`` is the number of document slots:

- metadata of the right JSON types and ranges (method, k1, b, delta, block size, next id,
  impact-cache budget, merge factor, tokenizer settings), and a list ``segments`` whose entries
  give each segment's ``num_docs`` (>= 1, together ``n``), ``num_postings`` (no larger than its
  postings stream's byte count: every posting takes at least one byte, so the decode buffers are
  bounded by the file) and ``avgdl`` (a finite number > 0);
- arrays of the exact dtypes and shapes: ``slot_ids`` int64, ``doc_lengths`` int64, ``live``
  bool, each ``[n]`` with ``n < 2**31``; the vocabulary as UTF-8 bytes and int64 offsets, its
  terms distinct; per segment ``i`` the arrays ``segment{i}.postings.*`` and ``segment{i}.terms``
  (int32, strictly ascending vocabulary ids, one per local term), and no other arrays;
- every segment's postings decode completely and consistently (see
  ``postings.decode_blocked_postings``) with doc ids below its ``num_docs``, and its block maxima
  equal those recomputed from the decoded postings at its ``avgdl``, so pruning is exact;
- ids of live slots >= 0 and distinct, ``next_id`` above them; every document length >= 0 and
  below ``2**53`` and equal to the sum of its postings' term frequencies (deleted documents keep
  their postings until their segment is merged).
"""

from __future__ import annotations

import numpy as np

from ._bm25_search import posting_contributions, tfc_of_one
from .bm25 import METHODS, BM25Params
from .errors import CorruptIndexFile, CorruptVarint
from .inverted_index_segment import Segment
from .postings import MAX_BLOCK_SIZE, BlockedPostings, block_max_impacts, decode_blocked_postings
from .tokenizer import Tokenizer
from .validation import array, meta_bool, meta_choice, meta_int, meta_number, meta_type, require, unique, values_in

_INT64_MAX = 2**63 - 1
MAX_DOC_LENGTH = 2**53 - 1  # float64 sums of term frequencies stay exact below this
_GLOBAL_ARRAYS = ("vocab_bytes", "vocab_offsets", "slot_ids", "doc_lengths", "live")


def check_inverted_index_contents(meta: dict, arrays: dict) -> dict:
    """Check a loaded inverted-index file; return its checked parts.

    Returns
    -------
    dict with ``params`` (BM25Params), ``tokenizer``, ``block_size``, ``impact_cache_bytes``,
    ``merge_factor``, ``next_id``, ``terms`` (list of str), ``slot_ids``, ``doc_lengths``, ``live``,
    ``segments`` (list of ``Segment``) and ``doc_freq`` (int64 ``[n_terms]``, live documents per term).
    """
    method = meta_choice(meta, "method", METHODS)
    k1, b, delta = (meta_number(meta, name) for name in ("k1", "b", "delta"))
    try:
        params = BM25Params(method, k1, b, delta)
    except ValueError as exc:
        raise CorruptIndexFile(f"BM25 parameters: {exc}") from None
    block_size = meta_int(meta, "block_size", 1, MAX_BLOCK_SIZE)
    impact_cache_bytes = meta_int(meta, "impact_cache_bytes", 0, _INT64_MAX)
    merge_factor = meta_int(meta, "merge_factor", 2, 2**31 - 1)
    next_id = meta_int(meta, "next_id", 0, _INT64_MAX)
    tokenizer = _tokenizer(meta_type(meta, "tokenizer", dict))
    segment_meta = meta_type(meta, "segments", list)

    slot_ids = array(arrays, "slot_ids", np.int64, (None,))
    n = slot_ids.size
    require(n < 2**31, f"array 'slot_ids' has {n} slots; at most 2**31 - 1 are allowed")
    doc_lengths = array(arrays, "doc_lengths", np.int64, (n,))
    live = array(arrays, "live", np.bool_, (n,))
    values_in(doc_lengths, "doc_lengths", 0, MAX_DOC_LENGTH)
    terms = _vocabulary(array(arrays, "vocab_bytes", np.uint8, (None,)), array(arrays, "vocab_offsets", np.int64,
                                                                                (None,)))
    expected = set(_GLOBAL_ARRAYS) | {f"segment{i}.{name}" for i in range(len(segment_meta))
                                      for name in _SEGMENT_ARRAYS}
    require(set(arrays) == expected, f"arrays {sorted(set(arrays) ^ expected)[:5]} do not match field 'segments'")

    segments, doc_freq, slot = [], np.zeros(len(terms), dtype=np.int64), 0
    for i, entry in enumerate(segment_meta):
        try:
            segment, global_terms, docs = _segment(i, entry, arrays, block_size, len(terms), doc_lengths, slot, n,
                                                   params)
        except CorruptIndexFile as exc:
            raise CorruptIndexFile(f"field 'segments[{i}]': {exc}") from None
        doc_freq += np.bincount(global_terms[live[slot + docs]], minlength=len(terms))
        segments.append(segment)
        slot += segment.num_docs
    require(slot == n, f"field 'segments' covers {slot} documents; array 'slot_ids' has {n}")

    live_ids = slot_ids[live]
    values_in(live_ids, "slot_ids", 0, _INT64_MAX)
    unique(live_ids, "slot_ids")
    require(live_ids.size == 0 or next_id > int(live_ids.max()), f"field 'next_id' is {next_id}, not above the "
                                                                  f"largest id")
    require(float(doc_lengths[live].sum(dtype=np.float64)) < 2**62, "array 'doc_lengths' sums past 2**62")
    return {"params": params, "tokenizer": tokenizer, "block_size": block_size,
            "impact_cache_bytes": impact_cache_bytes, "merge_factor": merge_factor, "next_id": next_id,
            "terms": terms, "slot_ids": slot_ids, "doc_lengths": doc_lengths, "live": live, "segments": segments,
            "doc_freq": doc_freq}


_SEGMENT_ARRAYS = ("postings.data", "postings.term_byte_start", "postings.block_byte_start",
                   "postings.block_last_doc", "postings.block_max_impact", "terms")


def _segment(i: int, entry, arrays: dict, block_size: int, num_terms: int, doc_lengths: np.ndarray, first_slot: int,
             num_slots: int, params: BM25Params) -> tuple:
    """Check segment ``i``; return it, the global term of each of its postings and their local doc ids."""
    name = f"segment{i}"
    require(isinstance(entry, dict), f"field 'segments[{i}]' must be an object")
    num_docs = meta_int(entry, "num_docs", 1, max(num_slots - first_slot, 1))
    require(first_slot + num_docs <= num_slots, f"field 'segments[{i}].num_docs' runs past the slots")
    avgdl = meta_number(entry, "avgdl")
    require(np.isfinite(avgdl) and avgdl > 0, f"field 'segments[{i}].avgdl' must be a finite number > 0")
    data = array(arrays, f"{name}.postings.data", np.uint8, (None,))
    num_postings = meta_int(entry, "num_postings", 0, data.size)
    term_byte_start = array(arrays, f"{name}.postings.term_byte_start", (np.uint32, np.uint64), (None,))
    block_byte_start = array(arrays, f"{name}.postings.block_byte_start", term_byte_start.dtype, (None,))
    num_blocks = block_byte_start.size
    block_last_doc = array(arrays, f"{name}.postings.block_last_doc", np.int32, (num_blocks,))
    block_max_impact = array(arrays, f"{name}.postings.block_max_impact", np.float32, (num_blocks,))
    terms = array(arrays, f"{name}.terms", np.int32, (term_byte_start.size,))
    require(terms.size == 0 or (int(terms[0]) >= 0 and int(terms[-1]) < num_terms and bool((np.diff(terms) > 0).all())),
            f"array '{name}.terms' is not ascending vocabulary ids")
    postings = BlockedPostings(data, term_byte_start, block_byte_start, block_last_doc, block_max_impact, block_size,
                               num_postings)
    try:
        local_terms, docs, tfs = decode_blocked_postings(postings, num_docs)
    except CorruptVarint as exc:
        raise CorruptIndexFile(f"arrays '{name}.postings.*': {exc}") from None
    lengths = doc_lengths[first_slot:first_slot + num_docs]
    tf_sums = np.bincount(docs, weights=tfs.astype(np.float64), minlength=num_docs)
    require(bool((tf_sums == lengths.astype(np.float64)).all()),
            f"array 'doc_lengths' disagrees with the term frequencies in the postings of {name}")
    tfc_one = tfc_of_one(lengths, avgdl, params.code, params.k1, params.b, params.delta)
    impacts = posting_contributions(tfs, docs, tfc_one, lengths, avgdl, params.code, params.k1, params.b,
                                    params.delta)
    exact = block_max_impacts(local_terms, impacts, terms.size, block_size)
    require(np.array_equal(block_max_impact, exact), f"array '{name}.postings.block_max_impact' differs from the "
                                                     f"maxima of the postings' contributions (pruning would be wrong)")
    segment = Segment(postings, terms, num_docs, avgdl)
    return segment, terms[local_terms].astype(np.int64), docs


def _tokenizer(settings: dict) -> Tokenizer:
    stopwords = meta_type(settings, "stopwords", list)
    require(all(isinstance(word, str) for word in stopwords), "field 'tokenizer.stopwords' must hold strings")
    return Tokenizer(meta_bool(settings, "lowercase"), frozenset(stopwords),
                     meta_int(settings, "min_length", 1, 2**31 - 1))


def _vocabulary(vocab_bytes: np.ndarray, offsets: np.ndarray) -> list[str]:
    require(offsets.size >= 1 and offsets[0] == 0 and offsets[-1] == vocab_bytes.size
            and bool((np.diff(offsets) >= 0).all()),
            "array 'vocab_offsets' is not a non-decreasing run from 0 to the size of 'vocab_bytes'")
    require(offsets.size - 1 < 2**31, "array 'vocab_offsets' lists more than 2**31 - 1 terms")
    blob = vocab_bytes.tobytes()
    try:
        bounds = offsets.tolist()
        terms = [blob[start:end].decode("utf-8") for start, end in zip(bounds[:-1], bounds[1:])]
    except UnicodeDecodeError:
        raise CorruptIndexFile("array 'vocab_bytes' is not UTF-8") from None
    require(len(set(terms)) == len(terms), "arrays 'vocab_*' list a term twice")
    return terms
