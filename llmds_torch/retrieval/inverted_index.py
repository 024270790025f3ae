"""BM25 inverted index over compressed, blocked postings in segments, with exact top-k search.

Postings live in segments (:class:`~llmds_torch.retrieval.inverted_index_segment.Segment`), as in
Lucene: each ``add`` writes its documents as a new segment of
:class:`~llmds_torch.retrieval.postings.BlockedPostings` (per term, doc gaps with the term frequency
folded in as LEB128 varints; terms longer than ``block_size`` cut into blocks that record their
largest contribution ``tfc - tfc(0)``, which bounds the block's best score for pruning), so adding
costs what the new documents cost, not the index. ``delete`` only marks documents dead; a log merge
policy rewrites adjacent segments of similar size as one (and a segment more than half dead alone),
dropping dead documents, so the segment count stays logarithmic in the index size; :meth:`optimize`
merges everything into one segment. Search runs in compiled loops over all segments with one top k
(``_bm25_search``; see there for why pruning never changes results).

Deleted documents leave the statistics at once: N, avgdl and document frequencies are always those
of the live documents (a forward index per segment, derived from its postings by the first delete
that touches it, names the terms whose frequency a delete lowers), so scores equal those of an index
built from the live documents alone. What search derives from the statistics (per document the
contribution of a tf = 1 posting, and the impact cache of the most frequent terms' decoded postings,
bounded by ``impact_cache_bytes``) is rebuilt by the first search after a change.

Documents are stored in slots (insertion order; a merge closes the gaps of dead documents), and the
caller's ids map to slots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import islice

import numba
import numpy as np

from llmds_torch.errors import ConfigError

from . import persist
from ._bm25_search import (
    PostingArrays,
    Queries,
    Results,
    Scoring,
    SegmentTable,
    build_impact_cache,
    new_scratch,
    read_term_headers,
    scratch_nbytes,
    search_parallel,
    search_range,
    tfc_of_one,
)
from .bm25 import BM25Params
from .postings import DEFAULT_BLOCK_SIZE
from .inverted_index_file import check_inverted_index_contents
from .inverted_index_segment import build_segment, merge_segments, segments_to_merge
from .errors import CorruptIndexFile, InvalidDocument, InvalidQuery, InvalidSearchParameter
from .ids import check_known_ids, check_new_ids, default_ids
from .tokenizer import Tokenizer

_FILE_KIND = "inverted_index"
_FILE_VERSION = 4  # 2: tf folded into the doc gap, block metadata only for multi-block terms; 3: NFKC + casefold
# tokens; 4: segments
DEFAULT_IMPACT_CACHE_BYTES = 16 * 2**20
DEFAULT_MERGE_FACTOR = 8
MAX_PADDED_RESULTS = 2**27


class InvertedIndex:
    """A BM25 index: ``add`` documents, ``search`` with a string or a token list.

    Parameters
    ----------
    method : str
        "lucene" (default), "robertson", "atire", "bm25l" or "bm25+" (see :mod:`.bm25`).
    k1, b, delta : float
        BM25 parameters, named as in bm25s.
    tokenizer : Tokenizer, optional
        Splits raw-text documents and queries (default: ``Tokenizer()``). Token lists bypass it.
    block_size : int
        Postings per compressed block of a long term (default 128); shorter terms are one block.
    impact_cache_bytes : int
        Memory for decoded postings of the most frequent terms (doc id and contribution, 12 bytes a
        posting), which search reads instead of decoding them (default 16 MiB; 0 turns it off).
        Results are identical with any budget. Not part of the index's size (``stats`` reports it).
    merge_factor : int
        Adjacent segments of one size level merged at once (default 8, at least 2): more segments
        make adding cheaper and search slower.
    """

    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, delta: float = 0.5,
                 tokenizer: Tokenizer | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 impact_cache_bytes: int = DEFAULT_IMPACT_CACHE_BYTES, merge_factor: int = DEFAULT_MERGE_FACTOR):
        self.params = BM25Params(method, k1, b, delta)
        if not isinstance(block_size, int) or not 1 <= block_size <= 65535:
            raise ConfigError(f"block_size must be an int in [1, 65535]; got {block_size!r}")
        if not isinstance(impact_cache_bytes, int) or isinstance(impact_cache_bytes, bool) or impact_cache_bytes < 0:
            raise ConfigError(f"impact_cache_bytes must be an int >= 0; got {impact_cache_bytes!r}")
        if not isinstance(merge_factor, int) or isinstance(merge_factor, bool) or merge_factor < 2:
            raise ConfigError(f"merge_factor must be an int >= 2; got {merge_factor!r}")
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self.block_size = block_size
        self.impact_cache_bytes = impact_cache_bytes
        self.merge_factor = merge_factor
        # The vocabulary only grows (a term that lost its documents keeps its id, with frequency 0).
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        empty = np.empty(0, dtype=np.int64)
        self.restore(((), empty, empty, np.empty(0, dtype=bool), empty, empty, empty, 0, 0))

    # ----------------------------------------------------------------------------------- building

    def __len__(self) -> int:
        return int(self._id_keys.size)

    def add(self, docs: Sequence, ids=None) -> np.ndarray:
        """Add documents as a new segment (merging segments as the merge policy asks); return their ids.

        Parameters
        ----------
        docs : sequence of str or of list[str]
            Raw texts (tokenized by ``self.tokenizer``) or pre-tokenized documents.
        ids : sequence of int, optional
            Non-negative, unique, not already present. Default: consecutive from one past the
            largest id so far (from 0 for a new index), in insertion order.

        Returns
        -------
        np.ndarray of int64, ``[len(docs)]``
        """
        token_lists = self._tokenize_documents(docs)
        new_ids = self._check_new_ids(ids, len(token_lists))
        if not token_lists:
            return new_ids
        num_docs = len(token_lists)
        lengths = np.fromiter((len(tokens) for tokens in token_lists), dtype=np.int64, count=num_docs)
        vocab = self._vocab  # new terms get the next ids, in order of first appearance
        flat_terms = np.fromiter((vocab.setdefault(token, len(vocab)) for tokens in token_lists for token in tokens),
                                 dtype=np.int64, count=int(lengths.sum()))
        self._terms.extend(reversed(list(islice(reversed(vocab), len(vocab) - len(self._terms)))))
        num_terms = len(self._terms)
        flat_docs = np.repeat(np.arange(num_docs, dtype=np.int64), lengths)
        keys, counts = np.unique(flat_docs * num_terms + flat_terms, return_counts=True)
        docs_of, terms_of = keys // max(num_terms, 1), keys % max(num_terms, 1)

        state = self._state_dict()
        state["total_length"] += int(lengths.sum())
        state["num_live"] = len(self) + num_docs
        segment = build_segment(terms_of, docs_of, counts, lengths, _average_length(state), self.params,
                                self.block_size)
        doc_freq = np.zeros(num_terms, dtype=np.int64)
        doc_freq[:self._doc_freq.size] = self._doc_freq
        state["doc_freq"] = doc_freq + np.bincount(terms_of, minlength=num_terms)
        first_slot = self._slot_ids.size
        order = np.argsort(new_ids, kind="stable")
        at = np.searchsorted(self._id_keys, new_ids[order])
        state["id_keys"] = np.insert(self._id_keys, at, new_ids[order])
        state["id_slots"] = np.insert(self._id_slots, at, first_slot + order)
        state["slot_ids"] = np.concatenate([self._slot_ids, new_ids])
        state["doc_lengths"] = np.concatenate([self._doc_lengths, lengths])
        state["live"] = np.concatenate([self._live, np.ones(num_docs, dtype=bool)])
        state["segments"] = self._segments + (segment,)
        state["next_id"] = max(self._next_id, int(new_ids.max()) + 1)
        self._merge_as_policy_says(state)
        self.restore(self._state_tuple(state))
        return new_ids

    def delete(self, ids) -> None:
        """Mark documents dead by id; all ids must be present (else nothing changes).

        Their postings stay in their segment until it is merged; the statistics drop them at once.

        Raises
        ------
        InvalidIds, DuplicateIds, UnknownIds
            If an id is not a non-negative int64, repeats, or was never added or is already deleted.
        """
        unique_ids = np.sort(check_known_ids(ids, self._id_keys, present_sorted=True))
        if unique_ids.size == 0:
            return
        at = np.searchsorted(self._id_keys, unique_ids)
        slots = self._id_slots[at]
        starts = self._segment_starts()
        segment_of = np.searchsorted(starts, slots, side="right") - 1
        removed = [self._segments[s].global_terms_of(slots[segment_of == s] - starts[s])
                   for s in np.unique(segment_of).tolist()]
        state = self._state_dict()
        state["doc_freq"] = self._doc_freq - np.bincount(np.concatenate(removed), minlength=self._doc_freq.size)
        state["total_length"] -= int(self._doc_lengths[slots].sum())
        state["num_live"] = len(self) - slots.size
        state["live"] = self._live.copy()
        state["live"][slots] = False
        state["id_keys"], state["id_slots"] = np.delete(self._id_keys, at), np.delete(self._id_slots, at)
        self._merge_as_policy_says(state)
        self.restore(self._state_tuple(state))

    def optimize(self) -> None:
        """Merge every segment into one, dropping the postings of deleted documents."""
        if len(self._segments) > 1 or not self._live.all():
            state = self._state_dict()
            self._merge(state, 0, len(self._segments))
            self.restore(self._state_tuple(state))

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    _STATE = ("_segments", "_slot_ids", "_doc_lengths", "_live", "_id_keys", "_id_slots", "_doc_freq",
              "_total_length", "_next_id")

    def snapshot(self) -> tuple:
        """The index's state, for :meth:`restore` (O(1): the index never modifies its state in place)."""
        return tuple(getattr(self, name) for name in self._STATE)

    def restore(self, snapshot: tuple) -> None:
        """Return to a state taken by :meth:`snapshot` of this index (undoes later adds and deletes).

        State: the segments; per slot ``[n_slots]`` the caller's id, the length and whether it is live;
        the live ids ascending with their slots; the live document frequency of each term; the live
        documents' total length; the next default id. Arrays are replaced, never modified in place.
        """
        for name, value in zip(self._STATE, snapshot):
            setattr(self, name, value)
        self._search_inputs_cache = None  # derived from the state by the next search
        self._scratch = None  # allocated by the first single-query search

    def _state_dict(self) -> dict:
        state = {name[1:]: getattr(self, name) for name in self._STATE}
        state["num_live"] = len(self)
        return state

    def _state_tuple(self, state: dict) -> tuple:
        return tuple(state[name[1:]] for name in self._STATE)

    def _segment_starts(self, segments=None) -> np.ndarray:
        """First slot of each segment, int64 ``[n_segments]``."""
        sizes = [segment.num_docs for segment in (self._segments if segments is None else segments)]
        return (np.cumsum(sizes) - sizes).astype(np.int64)

    def _merge_as_policy_says(self, state: dict) -> None:
        while True:
            starts = self._segment_starts(state["segments"])
            num_docs = [segment.num_docs for segment in state["segments"]]
            live = np.add.reduceat(state["live"].astype(np.int64), starts).tolist() if starts.size else []
            plan = segments_to_merge(live, num_docs, self.merge_factor)
            if plan is None:
                return
            self._merge(state, *plan)

    def _merge(self, state: dict, first: int, last: int) -> None:
        """Rewrite segments ``first:last`` of ``state`` as one without dead documents, closing their slot gaps."""
        segments = state["segments"]
        starts = self._segment_starts(segments)
        low = int(starts[first])
        high = low + sum(segment.num_docs for segment in segments[first:last])
        live = state["live"]
        merged = merge_segments(segments[first:last], live[low:high], state["doc_lengths"][low:high],
                                _average_length(state), self.params, self.block_size)
        keep = np.ones(live.size, dtype=bool)
        keep[low:high] = live[low:high]
        new_slot = np.cumsum(keep) - 1
        for name in ("slot_ids", "doc_lengths", "live"):
            state[name] = state[name][keep]
        state["id_slots"] = new_slot[state["id_slots"]]
        state["segments"] = segments[:first] + ((merged,) if merged.num_docs else ()) + segments[last:]

    def _tokenize_documents(self, docs) -> list[list[str]]:
        if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
            raise InvalidDocument("docs must be a list of documents (str or list of str); wrap a single text in a list")
        token_lists = []
        for i, doc in enumerate(docs):
            if isinstance(doc, str):
                token_lists.append(self.tokenizer(doc))
            elif isinstance(doc, (list, tuple)) and all(isinstance(tok, str) for tok in doc):
                token_lists.append(list(doc))
            else:
                raise InvalidDocument(
                    f"document {i} is a {type(doc).__name__}; documents must be str or lists of str")
        return token_lists

    def _check_new_ids(self, ids, count: int) -> np.ndarray:
        if ids is None:
            return default_ids(self._next_id, count)
        return check_new_ids(ids, count, self._id_keys, "documents", present_sorted=True)

    # ----------------------------------------------------------------------------------- searching

    def search(self, query, k: int = 10, prune: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents for one query.

        Parameters
        ----------
        query : str or list of str
            Raw text (tokenized like documents) or tokens. Empty queries and queries of only
            unknown terms give empty results.
        k : int
            Any k >= 1 (at most ``len(self)`` documents can come back).
        prune : bool
            Skip blocks that cannot reach the top k (default). Results are identical either way.

        Returns
        -------
        ids : np.ndarray of int64, ``[n]`` with ``n <= k``, best first
        scores : np.ndarray of float64, ``[n]``
        """
        _check_k(k)
        terms, counts = self._query_terms(query, 0)
        if not terms:
            return np.empty(0, dtype=np.int64), np.empty(0)
        k = self._heap_size(k)
        inputs = self._search_inputs()
        if self._scratch is None or self._scratch.heap_scores.size < k:
            self._scratch = new_scratch(self._slot_ids.size, k, self.block_size)
        results = Results(np.empty((1, k), dtype=np.int64), np.empty((1, k)), np.zeros(1, dtype=np.int64))
        queries = Queries(np.array([0, len(terms)], dtype=np.int64), np.array(terms, dtype=np.int64),
                          np.array(counts, dtype=np.float64))
        search_range(0, 1, queries, k, bool(prune), *inputs, self._scratch, results)
        size = int(results.sizes[0])
        return self._slot_ids[results.slots[0, :size]], results.scores[0, :size]

    def search_batch(self, queries: Sequence, k: int = 10, prune: bool = True,
                     parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents for each query, padded.

        Parameters
        ----------
        queries : sequence of (str or list of str), ``[n_queries]``
        k : int
            Columns of the result. Above the number of documents the rows are only padded; a padded
            result of more than ``MAX_PADDED_RESULTS`` entries raises ``InvalidSearchParameter``.
        prune : bool
        parallel : bool
            Spread queries over numba's threads.

        Returns
        -------
        ids : np.ndarray of int64, ``[n_queries, k]``, best first, padded with -1
        scores : np.ndarray of float64, ``[n_queries, k]``, padded with -inf
        """
        _check_k(k)
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise InvalidQuery("queries must be a list of queries (str or list of str)")
        query_ptr, all_terms, all_counts = [0], [], []
        for q, query in enumerate(queries):
            terms, counts = self._query_terms(query, q)
            all_terms += terms
            all_counts += counts
            query_ptr.append(len(all_terms))
        num_queries = len(queries)
        if k > self._heap_size(k) and num_queries * k > MAX_PADDED_RESULTS:
            raise InvalidSearchParameter(
                f"k = {k} for {num_queries} queries would pad the results to {num_queries * k} entries (the index "
                f"holds {self._slot_ids.size} documents); at most {MAX_PADDED_RESULTS} are allowed")
        results = Results(np.full((num_queries, k), -1, dtype=np.int64), np.full((num_queries, k), -np.inf),
                          np.zeros(num_queries, dtype=np.int64))
        if all_terms:
            heap = self._heap_size(k)
            queries = Queries(np.array(query_ptr, dtype=np.int64), np.array(all_terms, dtype=np.int64),
                              np.array(all_counts, dtype=np.float64))
            if parallel and num_queries > 1:
                num_chunks = min(num_queries, numba.get_num_threads() * 4)
                search_parallel(num_chunks, queries, heap, bool(prune), *self._search_inputs(), results)
            else:
                search_range(0, num_queries, queries, heap, bool(prune), *self._search_inputs(),
                             new_scratch(self._slot_ids.size, heap, self.block_size), results)
        found = results.slots >= 0
        ids = np.where(found, self._slot_ids[np.where(found, results.slots, 0)] if self._slot_ids.size else -1, -1)
        return ids, results.scores

    def _heap_size(self, k: int) -> int:
        """Top-k heap size for ``k``: no query can match more documents than the index has slots."""
        return min(int(k), max(self._slot_ids.size, 1))

    def _query_terms(self, query, position: int) -> tuple[list, list]:
        """Known query terms (vocabulary ids) and how often each occurs in the query."""
        if isinstance(query, str):
            tokens = self.tokenizer(query)
        elif isinstance(query, (list, tuple)) and all(isinstance(tok, str) for tok in query):
            tokens = query
        else:
            raise InvalidQuery(f"query {position} is a {type(query).__name__}; queries must be str or lists of str")
        counts: dict[int, int] = {}
        vocab, num_terms = self._vocab, self._doc_freq.size  # terms past the state's (after a restore) are unknown
        for tok in tokens:
            term = vocab.get(tok)
            if term is not None and term < num_terms:
                counts[term] = counts.get(term, 0) + 1
        return list(counts), list(counts.values())

    def _search_inputs(self) -> tuple:
        """``(postings, segments, scoring, cache)``: the groups of arrays the compiled search reads (as plain
        tuples in the order of their named fields), derived from the state by the first search after a change."""
        if self._search_inputs_cache is None:
            self._search_inputs_cache = self._derive_search_inputs()
        return self._search_inputs_cache[4]

    def _derive_search_inputs(self) -> tuple:
        segments, p = self._segments, self.params
        avgdl = _average_length(self._state_dict())
        tfc_one = tfc_of_one(self._doc_lengths, avgdl, p.code, p.k1, p.b, p.delta)
        scoring = Scoring(tfc_one, self._doc_lengths, len(self), avgdl, p.code, p.k1, p.b, p.delta, self._live,
                          self._doc_freq)
        postings = PostingArrays(*(_concatenated([s.postings.arrays()[name] for s in segments], dtype)
                                   for name, dtype in _POSTING_DTYPES), self.block_size)
        table = SegmentTable(
            _concatenated([s.terms for s in segments], np.int32),
            _starts([s.terms.size for s in segments], True),
            _starts([s.postings.data.size for s in segments]),
            _starts([s.postings.num_blocks for s in segments]),
            _starts([s.num_docs for s in segments]),
            np.array([min(1.0, s.avgdl / avgdl) for s in segments], dtype=np.float64),
            np.zeros(len(segments) + 1, dtype=np.int64))
        doc_freqs, header_pos = np.empty(table.terms.size, dtype=np.int64), np.empty(table.terms.size, dtype=np.int64)
        read_term_headers(postings.data, postings.term_byte_start, table.data_start, table.term_start,
                          self.block_size, doc_freqs, header_pos)
        cache = build_impact_cache(postings, doc_freqs, header_pos, table, self.impact_cache_bytes, scoring)
        table = table._replace(cache_term_start=cache.term_start)
        # The groups also as plain tuples, what the compiled entry points take (converted once, not per query).
        return postings, table, scoring, cache, (tuple(postings), tuple(table), tuple(scoring), tuple(cache.arrays()))

    # ----------------------------------------------------------------------------------- inspection

    def stats(self) -> dict:
        """Sizes and counts, including compressed postings against raw int32 (doc id + tf) postings.

        ``compressed_postings_bytes`` counts every byte search reads from the postings of all
        segments: the varint streams (term headers, gaps, tfs), the term directories (one offset per
        term), the block metadata (offset, last doc id, largest contribution per block of a
        multi-block term) and each segment's map from its terms to the vocabulary. Postings of
        deleted documents count until their segment is merged (``dead_documents``). The vocabulary
        strings, the per-document arrays and the forward indexes are not in it; ``index_bytes`` adds
        the last two (a segment's forward index exists once a delete has touched it). The impact cache
        (``impact_cache_*``) is counted in neither: it is decoded copies of postings, bounded by
        ``impact_cache_bytes``.
        """
        segments = self._segments
        num_postings = sum(s.postings.num_postings for s in segments)
        raw = 8 * num_postings
        stream = sum(int(s.postings.data.nbytes) for s in segments)
        directory = sum(int(s.postings.term_byte_start.nbytes) for s in segments)
        term_maps = sum(int(s.terms.nbytes) for s in segments)
        compressed = sum(s.postings.nbytes() for s in segments) + term_maps
        self._search_inputs()
        cache = self._search_inputs_cache[3]
        return {
            "method": self.params.method,
            "num_documents": len(self),
            "num_segments": len(segments),
            "dead_documents": int(self._slot_ids.size - len(self)),
            "num_terms": int(np.count_nonzero(self._doc_freq)),
            "num_postings": num_postings,
            "num_blocks": sum(s.postings.num_blocks for s in segments),
            "block_size": self.block_size,
            "avg_doc_length": _average_length(self._state_dict()) if len(self) else 0.0,
            "compressed_postings_bytes": compressed,
            "varint_stream_bytes": stream,
            "term_directory_bytes": directory,
            "segment_term_map_bytes": term_maps,
            "block_metadata_bytes": compressed - stream - directory - term_maps,
            "raw_int32_postings_bytes": raw,
            "compression_ratio": compressed / raw if raw else 0.0,
            "forward_index_bytes": sum(s.forward_index_nbytes() for s in segments),
            "index_bytes": self.nbytes(),
            "search_scratch_bytes": scratch_nbytes(self._slot_ids.size),
            "impact_cache_terms": int(cache.terms.size),
            "impact_cache_postings": int(cache.docs.size),
            "impact_cache_bytes": cache.nbytes(),
        }

    def nbytes(self) -> int:
        """Bytes of the segments (postings with their metadata, term maps, forward indexes once built) and of
        the per-document arrays, including the precomputed tf = 1 contributions (not the vocabulary, the
        impact cache, nor the per-thread search scratch)."""
        return (sum(s.nbytes() for s in self._segments) + self._slot_ids.nbytes + self._doc_lengths.nbytes
                + self._live.nbytes + 8 * self._slot_ids.size + self._doc_freq.nbytes)

    # ----------------------------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike, *, key: bytes | None = None) -> None:
        """Write the index to ``path`` (versioned, no pickle; SHA-256 checksummed, or HMAC-SHA256 signed
        with ``key``, see :mod:`llmds_torch.retrieval.persist`). Segments are saved as they are, postings
        of deleted documents included; forward indexes are not saved (a delete derives them from the
        postings when it first needs them)."""
        encoded = [term.encode("utf-8") for term in self._terms]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        arrays = dict(vocab_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8), vocab_offsets=offsets,
                      slot_ids=self._slot_ids, doc_lengths=self._doc_lengths, live=self._live)
        for i, segment in enumerate(self._segments):
            arrays.update({f"segment{i}.postings.{name}": array for name, array in segment.postings.arrays().items()})
            arrays[f"segment{i}.terms"] = segment.terms
        meta = {
            "method": self.params.method, "k1": self.params.k1, "b": self.params.b, "delta": self.params.delta,
            "block_size": self.block_size, "next_id": self._next_id, "impact_cache_bytes": self.impact_cache_bytes,
            "merge_factor": self.merge_factor,
            "tokenizer": {"lowercase": self.tokenizer.lowercase, "stopwords": sorted(self.tokenizer.stopwords),
                          "min_length": self.tokenizer.min_length},
            "segments": [{"num_docs": s.num_docs, "num_postings": s.postings.num_postings, "avgdl": s.avgdl}
                         for s in self._segments],
        }
        persist.save(path, _FILE_KIND, _FILE_VERSION, arrays, meta, key)

    @classmethod
    def load(cls, path: str | os.PathLike, *, key: bytes | None = None) -> "InvertedIndex":
        """Read an index written by :meth:`save` (with the same ``key``, if any).

        Every field of every segment is checked before use (see
        :mod:`llmds_torch.retrieval.inverted_index_file`), including each segment's block maxima against
        those recomputed from its decoded postings, so pruning is exact. Files of layout version 3 and
        older (one unsegmented index) are refused by their version.

        Raises
        ------
        CorruptIndexFile
            Bad magic, version, checksum, kind, or any inconsistent content; the message names the field.
        """
        bundle = persist.load(path, _FILE_KIND, key)
        if bundle.kind_version != _FILE_VERSION:
            raise CorruptIndexFile(f"inverted index layout version {bundle.kind_version}; this build reads "
                                   f"{_FILE_VERSION} (segmented); rebuild the index from its documents")
        c = check_inverted_index_contents(bundle.meta, bundle.arrays)
        p = c["params"]
        index = cls(p.method, p.k1, p.b, p.delta, c["tokenizer"], c["block_size"], c["impact_cache_bytes"],
                    c["merge_factor"])
        index._terms = c["terms"]
        index._vocab = dict(zip(index._terms, range(len(index._terms))))
        slot_ids, live = c["slot_ids"], c["live"]
        live_slots = np.flatnonzero(live)
        order = np.argsort(slot_ids[live_slots], kind="stable")
        index.restore((tuple(c["segments"]), slot_ids, c["doc_lengths"], live, slot_ids[live_slots][order],
                       live_slots[order].astype(np.int64), c["doc_freq"], int(c["doc_lengths"][live].sum()),
                       c["next_id"]))
        return index


_POSTING_DTYPES = (("data", np.uint8), ("term_byte_start", np.uint32), ("block_byte_start", np.uint32),
                   ("block_last_doc", np.int32), ("block_max_impact", np.float32))


def _concatenated(arrays: list, empty_dtype) -> np.ndarray:
    """One array of ``arrays`` in order (the array itself when there is one)."""
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=empty_dtype)


def _starts(sizes: list, with_end: bool = False) -> np.ndarray:
    """Where each of consecutive parts of ``sizes`` starts, int64 ``[n]`` (``[n + 1]`` with the end)."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    starts = ends - np.asarray(sizes, dtype=np.int64)
    return np.append(starts, ends[-1] if ends.size else 0) if with_end else starts


def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidSearchParameter(f"k must be an int >= 1; got {k!r}")


def _average_length(state: dict) -> float:
    """Mean length of the live documents (1.0 when there are none or all are empty, so nothing divides by 0)."""
    total, live = state["total_length"], state["num_live"]
    return total / live if live and total > 0 else 1.0
