"""What an inverted-index file must satisfy before :meth:`InvertedIndex.load` uses it.

:func:`check_inverted_index_contents` refuses (``CorruptIndexFile`` naming the field) any file
that breaks the index's invariants; ``n`` is the number of document slots:

- metadata of the right JSON types and ranges (method, k1, b, delta, block size, next id,
  impact-cache budget, tokenizer settings), and ``num_postings`` no larger than the postings
  stream's byte count (every posting takes at least one byte), so the decode buffers are bounded
  by the file;
- arrays of the exact dtypes and shapes: ``slot_ids`` int64, ``doc_lengths`` int64, ``live``
  bool, each ``[n]`` with ``n < 2**31``; the vocabulary as UTF-8 bytes and int64 offsets, its
  terms distinct, one per postings term;
- postings that decode completely and consistently (see ``postings.decode_blocked_postings``), with
  doc ids of live slots only;
- ids of live slots >= 0 and distinct, ``next_id`` above them; every document length >= 0 and
  below ``2**53``, each live one equal to the sum of its postings' term frequencies.

The loader then recomputes every block's largest contribution from the decoded postings and
requires the stored block maxima to equal them, so pruning bounds are exact.
"""

from __future__ import annotations

import numpy as np

from .bm25 import METHODS, BM25Params
from .postings import MAX_BLOCK_SIZE, BlockedPostings, decode_blocked_postings
from .errors import CorruptIndexFile, CorruptVarint
from .tokenizer import Tokenizer
from .validation import array, meta_bool, meta_choice, meta_int, meta_number, meta_type, require, unique, values_in

_INT64_MAX = 2**63 - 1
MAX_DOC_LENGTH = 2**53 - 1  # float64 sums of term frequencies stay exact below this


def check_inverted_index_contents(meta: dict, arrays: dict) -> dict:
    """Check a loaded inverted-index file; return its checked parts.

    Returns
    -------
    dict with ``params`` (BM25Params), ``tokenizer``, ``block_size``, ``impact_cache_bytes``, ``next_id``,
    ``postings`` (BlockedPostings), decoded ``terms_docs_tfs`` (three int64 ``[n_postings]``), ``terms``
    (list of str), ``slot_ids``, ``doc_lengths``, ``live``.
    """
    method = meta_choice(meta, "method", METHODS)
    k1, b, delta = (meta_number(meta, name) for name in ("k1", "b", "delta"))
    try:
        params = BM25Params(method, k1, b, delta)
    except ValueError as exc:
        raise CorruptIndexFile(f"BM25 parameters: {exc}") from None
    block_size = meta_int(meta, "block_size", 1, MAX_BLOCK_SIZE)
    impact_cache_bytes = meta_int(meta, "impact_cache_bytes", 0, _INT64_MAX)
    next_id = meta_int(meta, "next_id", 0, _INT64_MAX)
    tokenizer = _tokenizer(meta_type(meta, "tokenizer", dict))

    data = array(arrays, "postings.data", np.uint8, (None,))
    num_postings = meta_int(meta, "num_postings", 0, data.size)
    term_byte_start = array(arrays, "postings.term_byte_start", (np.uint32, np.uint64), (None,))
    block_byte_start = array(arrays, "postings.block_byte_start", term_byte_start.dtype, (None,))
    num_blocks = block_byte_start.size
    block_last_doc = array(arrays, "postings.block_last_doc", np.int32, (num_blocks,))
    block_max_impact = array(arrays, "postings.block_max_impact", np.float32, (num_blocks,))
    slot_ids = array(arrays, "slot_ids", np.int64, (None,))
    n = slot_ids.size
    require(n < 2**31, f"array 'slot_ids' has {n} slots; at most 2**31 - 1 are allowed")
    doc_lengths = array(arrays, "doc_lengths", np.int64, (n,))
    live = array(arrays, "live", np.bool_, (n,))
    num_terms = term_byte_start.size
    vocab_bytes = array(arrays, "vocab_bytes", np.uint8, (None,))
    vocab_offsets = array(arrays, "vocab_offsets", np.int64, (num_terms + 1,))

    postings = BlockedPostings(data, term_byte_start, block_byte_start, block_last_doc, block_max_impact, block_size,
                               num_postings)
    try:
        terms_docs_tfs = decode_blocked_postings(postings, n)
    except CorruptVarint as exc:
        raise CorruptIndexFile(f"arrays 'postings.*': {exc}") from None
    docs, tfs = terms_docs_tfs[1], terms_docs_tfs[2]

    terms = _vocabulary(vocab_bytes, vocab_offsets)
    live_ids = slot_ids[live]
    values_in(live_ids, "slot_ids", 0, _INT64_MAX)
    unique(live_ids, "slot_ids")
    require(live_ids.size == 0 or next_id > int(live_ids.max()), f"field 'next_id' is {next_id}, not above the "
                                                                  f"largest id")
    require(bool(live[docs].all()), "arrays 'postings.*' hold postings of a deleted (not live) document")
    values_in(doc_lengths, "doc_lengths", 0, MAX_DOC_LENGTH)
    tf_sums = np.bincount(docs, weights=tfs.astype(np.float64), minlength=n)
    require(bool((tf_sums[live] == doc_lengths[live].astype(np.float64)).all()),
            "array 'doc_lengths' disagrees with the term frequencies in the postings")
    require(float(doc_lengths[live].sum(dtype=np.float64)) < 2**62, "array 'doc_lengths' sums past 2**62")
    return {"params": params, "tokenizer": tokenizer, "block_size": block_size,
            "impact_cache_bytes": impact_cache_bytes, "next_id": next_id, "postings": postings,
            "terms_docs_tfs": terms_docs_tfs, "terms": terms, "slot_ids": slot_ids, "doc_lengths": doc_lengths,
            "live": live}


def _tokenizer(settings: dict) -> Tokenizer:
    stopwords = meta_type(settings, "stopwords", list)
    require(all(isinstance(word, str) for word in stopwords), "field 'tokenizer.stopwords' must hold strings")
    return Tokenizer(meta_bool(settings, "lowercase"), frozenset(stopwords),
                     meta_int(settings, "min_length", 1, 2**31 - 1))


def _vocabulary(vocab_bytes: np.ndarray, offsets: np.ndarray) -> list[str]:
    require(offsets[0] == 0 and offsets[-1] == vocab_bytes.size and bool((np.diff(offsets) >= 0).all()),
            "array 'vocab_offsets' is not a non-decreasing run from 0 to the size of 'vocab_bytes'")
    blob = vocab_bytes.tobytes()
    try:
        terms = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(offsets.size - 1)]
    except UnicodeDecodeError:
        raise CorruptIndexFile("array 'vocab_bytes' is not UTF-8") from None
    require(len(set(terms)) == len(terms), "arrays 'vocab_*' list a term twice")
    return terms
