"""BM25 inverted index over compressed, blocked postings with exact top-k search.

Postings live in one :class:`~llmds_torch.retrieval.postings.BlockedPostings`: per term, doc gaps with
the term frequency folded in (tf = 1 is one bit) as LEB128 varints; terms longer than ``block_size``
are cut into blocks that record their largest contribution ``tfc - tfc(0)``, which bounds the block's
best score for pruning. Search runs in compiled loops (``_bm25_search``); see there for why pruning
never changes results. Per document, the contribution of a tf = 1 posting is precomputed at each
rebuild, so most postings cost one lookup; the most frequent terms are also kept decoded, with their
contributions, in a bounded impact cache (``impact_cache_bytes``) that search reads instead.

Documents are stored in slots (insertion order); the caller's ids map to slots. ``add`` and
``delete`` rebuild the postings from decoded arrays in vectorized numpy, so add documents in
batches rather than one at a time. Deleted documents leave the statistics: N, avgdl and document
frequencies are always those of the live documents, so scores equal those of an index built from
the live documents alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numba
import numpy as np

from llmds_torch.errors import ConfigError

from . import persist
from ._bm25_search import (
    PostingArrays,
    Queries,
    Results,
    Scoring,
    build_impact_cache,
    new_scratch,
    posting_contributions,
    scratch_nbytes,
    search_parallel,
    search_range,
    tfc_of_one,
)
from .bm25 import BM25Params
from .postings import (
    DEFAULT_BLOCK_SIZE,
    BlockedPostings,
    block_max_impacts,
    decode_blocked_postings,
    encode_blocked_postings,
)
from .inverted_index_file import check_inverted_index_contents
from .errors import CorruptIndexFile, InvalidDocument, InvalidQuery, InvalidSearchParameter
from .ids import check_known_ids, check_new_ids
from .tokenizer import Tokenizer

_FILE_KIND = "inverted_index"
_FILE_VERSION = 3  # 2: tf folded into the doc gap, block metadata only for multi-block terms; 3: NFKC + casefold tokens
DEFAULT_IMPACT_CACHE_BYTES = 16 * 2**20
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
    """

    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, delta: float = 0.5,
                 tokenizer: Tokenizer | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 impact_cache_bytes: int = DEFAULT_IMPACT_CACHE_BYTES):
        self.params = BM25Params(method, k1, b, delta)
        if not isinstance(block_size, int) or not 1 <= block_size <= 65535:
            raise ConfigError(f"block_size must be an int in [1, 65535]; got {block_size!r}")
        if not isinstance(impact_cache_bytes, int) or isinstance(impact_cache_bytes, bool) or impact_cache_bytes < 0:
            raise ConfigError(f"impact_cache_bytes must be an int >= 0; got {impact_cache_bytes!r}")
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self.block_size = block_size
        self.impact_cache_bytes = impact_cache_bytes
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._slot_ids = np.empty(0, dtype=np.int64)      # [n_slots] caller's id of each slot
        self._doc_lengths = np.empty(0, dtype=np.int64)   # [n_slots] tokens per document
        self._live = np.empty(0, dtype=bool)              # [n_slots]
        self._slot_of: dict[int, int] = {}
        self._next_id = 0
        self._commit({}, [], encode_blocked_postings([], [], [], 0, block_size), self._slot_ids, self._doc_lengths,
                     self._live, {}, 0)

    # ----------------------------------------------------------------------------------- building

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, docs: Sequence, ids=None) -> np.ndarray:
        """Add documents; return their ids.

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

        vocab, terms = dict(self._vocab), list(self._terms)
        first_slot = self._slot_ids.size
        lengths = np.fromiter((len(tokens) for tokens in token_lists), dtype=np.int64, count=len(token_lists))
        flat_terms = np.fromiter(
            (vocab.setdefault(tok, len(vocab)) for tokens in token_lists for tok in tokens),
            dtype=np.int64, count=int(lengths.sum()))
        terms.extend(list(vocab)[len(terms):])
        flat_slots = np.repeat(np.arange(first_slot, first_slot + len(token_lists), dtype=np.int64), lengths)
        keys, counts = np.unique(flat_slots * len(vocab) + flat_terms, return_counts=True)
        new_slots, new_terms = keys // max(len(vocab), 1), keys % max(len(vocab), 1)

        old_terms, old_docs, old_tfs = decode_blocked_postings(self._postings)
        doc_lengths = np.concatenate([self._doc_lengths, lengths])
        live = np.concatenate([self._live, np.ones(len(token_lists), dtype=bool)])
        postings = self._encode(np.concatenate([old_terms, new_terms]), np.concatenate([old_docs, new_slots]),
                                np.concatenate([old_tfs, counts]), doc_lengths, live, len(vocab))
        slot_of = dict(self._slot_of)
        slot_of.update(zip(new_ids.tolist(), range(first_slot, first_slot + len(token_lists))))
        self._commit(vocab, terms, postings, np.concatenate([self._slot_ids, new_ids]), doc_lengths, live, slot_of,
                     max(self._next_id, int(new_ids.max()) + 1))
        return new_ids

    def delete(self, ids) -> None:
        """Remove documents by id; all ids must be present (else nothing changes).

        Raises
        ------
        InvalidIds, DuplicateIds, UnknownIds
            If an id is not a non-negative int64, repeats, or was never added or is already deleted.
        """
        ids = check_known_ids(ids, self._slot_of)
        slots = np.array(sorted({self._slot_of[int(i)] for i in ids.tolist()}), dtype=np.int64)
        if slots.size == 0:
            return
        terms, docs, tfs = decode_blocked_postings(self._postings)
        keep = ~np.isin(docs, slots)
        live = self._live.copy()
        live[slots] = False
        postings = self._encode(terms[keep], docs[keep], tfs[keep], self._doc_lengths, live, len(self._vocab))
        slot_of = dict(self._slot_of)
        for i in ids.tolist():
            slot_of.pop(int(i), None)
        self._commit(self._vocab, self._terms, postings, self._slot_ids, self._doc_lengths, live, slot_of,
                     self._next_id)

    _STATE = ("_vocab", "_terms", "_postings", "_slot_ids", "_doc_lengths", "_live", "_slot_of", "_next_id",
              "_avgdl", "_tfc_one", "_impact_cache")

    def _commit(self, vocab, terms, postings, slot_ids, doc_lengths, live, slot_of, next_id) -> None:
        """Replace the whole state in one step, after computing what search derives from it.

        Nothing is assigned until everything is computed, so an error leaves the index unchanged.
        The arrays and dicts given are owned by the index from here on (never modified in place).
        """
        avgdl = _average_length(doc_lengths, live)
        p = self.params
        tfc_one = tfc_of_one(doc_lengths, avgdl, p.code, p.k1, p.b, p.delta)
        impact_cache = build_impact_cache(postings, self.impact_cache_bytes, tfc_one, doc_lengths, avgdl, p.code,
                                          p.k1, p.b, p.delta)
        self.restore((vocab, terms, postings, slot_ids, doc_lengths, live, slot_of, next_id, avgdl, tfc_one,
                      impact_cache))

    def snapshot(self) -> tuple:
        """The index's state, for :meth:`restore` (O(1): the index never modifies its state in place)."""
        return tuple(getattr(self, name) for name in self._STATE)

    def restore(self, snapshot: tuple) -> None:
        """Return to a state taken by :meth:`snapshot` of this index (undoes later adds and deletes)."""
        for name, value in zip(self._STATE, snapshot):
            setattr(self, name, value)
        self._scratch = None  # allocated by the first single-query search

    def _encode(self, terms, docs, tfs, doc_lengths, live, num_terms) -> BlockedPostings:
        """Postings with block maxima of their impacts (see :meth:`_impacts`)."""
        impacts = self._impacts(docs, tfs, doc_lengths, live)
        return encode_blocked_postings(terms, docs, tfs, num_terms, self.block_size, impacts)

    def _impacts(self, docs, tfs, doc_lengths, live) -> np.ndarray:
        """``tfc - tfc(0)`` of each posting at the average length of the ``live`` documents: float64 ``[n]``."""
        avgdl = _average_length(doc_lengths, live)
        p = self.params
        tfc_one = tfc_of_one(doc_lengths, avgdl, p.code, p.k1, p.b, p.delta)
        return posting_contributions(tfs, docs, tfc_one, doc_lengths, avgdl, p.code, p.k1, p.b, p.delta)

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
            return np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        return check_new_ids(ids, count, self._slot_of, "documents")

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
        if self._scratch is None or self._scratch.heap_scores.size < k:
            self._scratch = new_scratch(self._slot_ids.size, k, self._postings.block_size)
        results = Results(np.empty((1, k), dtype=np.int64), np.empty((1, k)), np.zeros(1, dtype=np.int64))
        queries = Queries(np.array([0, len(terms)], dtype=np.int64), np.array(terms, dtype=np.int64),
                          np.array(counts, dtype=np.float64))
        search_range(0, 1, queries, k, bool(prune), *self._search_inputs(), self._scratch, results)
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
                             new_scratch(self._slot_ids.size, heap, self._postings.block_size), results)
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
        vocab = self._vocab
        for tok in tokens:
            term = vocab.get(tok)
            if term is not None:
                counts[term] = counts.get(term, 0) + 1
        return list(counts), list(counts.values())

    def _search_inputs(self) -> tuple:
        """``(postings, scoring, cache)``: the named groups of arrays the compiled search reads."""
        p, params = self._postings, self.params
        postings = PostingArrays(p.data, p.term_byte_start, p.block_byte_start, p.block_last_doc, p.block_max_impact,
                                 p.block_size)
        scoring = Scoring(self._tfc_one, self._doc_lengths, len(self._slot_of), self._avgdl, params.code, params.k1,
                          params.b, params.delta)
        return postings, scoring, self._impact_cache.arrays()

    # ----------------------------------------------------------------------------------- inspection

    def stats(self) -> dict:
        """Sizes and counts, including compressed postings against raw int32 (doc id + tf) postings.

        ``compressed_postings_bytes`` counts every byte search reads from the postings: the varint
        stream (term headers, gaps, tfs), the term directory (one offset per term) and the block
        metadata (offset, last doc id, largest contribution per block of a multi-block term). The
        vocabulary strings and the per-document arrays are not in it; ``index_bytes`` adds the
        per-document arrays. The impact cache (``impact_cache_*``) is counted in neither: it is
        decoded copies of postings, bounded by ``impact_cache_bytes``.
        """
        postings = self._postings
        raw = 8 * postings.num_postings
        compressed = postings.nbytes()
        stream, directory = int(postings.data.nbytes), int(postings.term_byte_start.nbytes)
        return {
            "method": self.params.method,
            "num_documents": len(self._slot_of),
            "num_terms": int(np.count_nonzero(postings.doc_freq())),
            "num_postings": postings.num_postings,
            "num_blocks": postings.num_blocks,
            "block_size": self.block_size,
            "avg_doc_length": self._avgdl if self._slot_of else 0.0,
            "compressed_postings_bytes": compressed,
            "varint_stream_bytes": stream,
            "term_directory_bytes": directory,
            "block_metadata_bytes": compressed - stream - directory,
            "raw_int32_postings_bytes": raw,
            "compression_ratio": compressed / raw if raw else 0.0,
            "index_bytes": self.nbytes(),
            "search_scratch_bytes": scratch_nbytes(self._slot_ids.size),
            "impact_cache_terms": int(self._impact_cache.terms.size),
            "impact_cache_postings": int(self._impact_cache.docs.size),
            "impact_cache_bytes": self._impact_cache.nbytes(),
        }

    def nbytes(self) -> int:
        """Bytes of the postings with their metadata and of the per-document arrays, including the
        precomputed tf = 1 contributions (not the vocabulary, nor the per-thread search scratch)."""
        return (self._postings.nbytes() + self._slot_ids.nbytes + self._doc_lengths.nbytes + self._live.nbytes
                + self._tfc_one.nbytes)

    # ----------------------------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike, *, key: bytes | None = None) -> None:
        """Write the index to ``path`` (versioned, no pickle; SHA-256 checksummed, or HMAC-SHA256 signed
        with ``key``, see :mod:`llmds_torch.retrieval.persist`)."""
        encoded = [term.encode("utf-8") for term in self._terms]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        arrays = {f"postings.{name}": array for name, array in self._postings.arrays().items()}
        arrays.update(
            vocab_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8), vocab_offsets=offsets,
            slot_ids=self._slot_ids, doc_lengths=self._doc_lengths, live=self._live)
        meta = {
            "method": self.params.method, "k1": self.params.k1, "b": self.params.b, "delta": self.params.delta,
            "block_size": self.block_size, "next_id": self._next_id, "num_postings": self._postings.num_postings,
            "impact_cache_bytes": self.impact_cache_bytes,
            "tokenizer": {"lowercase": self.tokenizer.lowercase, "stopwords": sorted(self.tokenizer.stopwords),
                          "min_length": self.tokenizer.min_length},
        }
        persist.save(path, _FILE_KIND, _FILE_VERSION, arrays, meta, key)

    @classmethod
    def load(cls, path: str | os.PathLike, *, key: bytes | None = None) -> "InvertedIndex":
        """Read an index written by :meth:`save` (with the same ``key``, if any).

        Every field is checked before use (see :mod:`llmds_torch.retrieval.inverted_index_file`), and
        the stored block maxima must equal those recomputed from the decoded postings, so pruning is exact.

        Raises
        ------
        CorruptIndexFile
            Bad magic, version, checksum, kind, or any inconsistent content; the message names the field.
        """
        bundle = persist.load(path, _FILE_KIND, key)
        if bundle.kind_version != _FILE_VERSION:
            raise CorruptIndexFile(f"inverted index layout version {bundle.kind_version}; this build reads {_FILE_VERSION}")
        c = check_inverted_index_contents(bundle.meta, bundle.arrays)
        p = c["params"]
        index = cls(p.method, p.k1, p.b, p.delta, c["tokenizer"], c["block_size"], c["impact_cache_bytes"])
        slot_ids, doc_lengths, live, postings = c["slot_ids"], c["doc_lengths"], c["live"], c["postings"]
        terms_ids, docs, tfs = c["terms_docs_tfs"]
        exact = block_max_impacts(terms_ids, index._impacts(docs, tfs, doc_lengths, live), postings.num_terms,
                                  postings.block_size)
        if not np.array_equal(postings.block_max_impact, exact):
            raise CorruptIndexFile("array 'postings.block_max_impact' differs from the maxima of the postings' "
                                   "contributions (pruning would be wrong)")
        terms = c["terms"]
        slot_of = {int(slot_ids[s]): int(s) for s in np.flatnonzero(live)}
        index._commit({term: i for i, term in enumerate(terms)}, terms, postings, slot_ids, doc_lengths, live,
                      slot_of, c["next_id"])
        return index


def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidSearchParameter(f"k must be an int >= 1; got {k!r}")


def _average_length(doc_lengths: np.ndarray, live: np.ndarray) -> float:
    """Mean length of the live documents (1.0 when there are none or all are empty, so nothing divides by 0)."""
    live_lengths = doc_lengths[live]
    total = int(live_lengths.sum())
    return total / live_lengths.size if live_lengths.size and total > 0 else 1.0
