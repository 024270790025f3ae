"""BM25 inverted index over compressed, blocked postings with exact top-k search.

Postings live in one :class:`~llmds_torch.retrieval.codec.BlockedPostings`: per term, doc gaps and
term frequencies as LEB128 varints in blocks of ``block_size`` with each block's largest term
frequency and shortest document, which bound the block's best score for pruning. Search runs in
compiled loops (``_bm25_search``); see there for why pruning never changes results.

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
from ._bm25_search import search_parallel, search_range
from .bm25 import BM25Params
from .codec import (
    DEFAULT_BLOCK_SIZE,
    BlockedPostings,
    decode_blocked_postings,
    encode_blocked_postings,
    postings_from_arrays,
)
from .errors import CorruptIndexFile, DuplicateIds, InvalidDocument, InvalidQuery, InvalidSearchParameter, UnknownIds
from .tokenizer import Tokenizer

_FILE_KIND = "inverted_index"
_FILE_VERSION = 1


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
        Postings per compressed block (default 128).
    """

    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, delta: float = 0.5,
                 tokenizer: Tokenizer | None = None, block_size: int = DEFAULT_BLOCK_SIZE):
        self.params = BM25Params(method, k1, b, delta)
        if not isinstance(block_size, int) or not 1 <= block_size <= 65535:
            raise ConfigError(f"block_size must be an int in [1, 65535]; got {block_size!r}")
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self.block_size = block_size
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._slot_ids = np.empty(0, dtype=np.int64)      # [n_slots] caller's id of each slot
        self._doc_lengths = np.empty(0, dtype=np.int64)   # [n_slots] tokens per document
        self._live = np.empty(0, dtype=bool)              # [n_slots]
        self._slot_of: dict[int, int] = {}
        self._next_id = 0
        self._postings = encode_blocked_postings([], [], [], [], 0, block_size)

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
        postings = encode_blocked_postings(
            np.concatenate([old_terms, new_terms]), np.concatenate([old_docs, new_slots]),
            np.concatenate([old_tfs, counts]), doc_lengths, len(vocab), self.block_size)

        self._vocab, self._terms, self._postings = vocab, terms, postings
        self._doc_lengths = doc_lengths
        self._slot_ids = np.concatenate([self._slot_ids, new_ids])
        self._live = np.concatenate([self._live, np.ones(len(token_lists), dtype=bool)])
        self._slot_of.update(zip(new_ids.tolist(), range(first_slot, first_slot + len(token_lists))))
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def delete(self, ids) -> None:
        """Remove documents by id; all ids must be present (else nothing changes).

        Raises
        ------
        UnknownIds
            If any id was never added or is already deleted.
        """
        ids = np.atleast_1d(np.asarray(ids))
        if ids.size and ids.dtype.kind not in "iu":
            raise UnknownIds(f"ids must be integers; got dtype {ids.dtype}")
        missing = [int(i) for i in ids.tolist() if int(i) not in self._slot_of]
        if missing:
            raise UnknownIds(f"ids not in the index: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        slots = np.array(sorted({self._slot_of[int(i)] for i in ids.tolist()}), dtype=np.int64)
        if slots.size == 0:
            return
        terms, docs, tfs = decode_blocked_postings(self._postings)
        keep = ~np.isin(docs, slots)
        postings = encode_blocked_postings(terms[keep], docs[keep], tfs[keep], self._doc_lengths,
                                           len(self._vocab), self.block_size)
        self._postings = postings
        self._live[slots] = False
        for i in ids.tolist():
            self._slot_of.pop(int(i), None)

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
        array = np.asarray(ids)
        if array.shape != (count,) or (count and array.dtype.kind not in "iu"):
            raise DuplicateIds(f"ids must be {count} integers, one per document; got {array.dtype} {array.shape}")
        array = array.astype(np.int64)
        if count and array.min() < 0:
            raise DuplicateIds("ids must be non-negative (-1 pads search results)")
        if np.unique(array).size != count:
            raise DuplicateIds("ids repeat within this call")
        present = [i for i in array.tolist() if i in self._slot_of]
        if present:
            raise DuplicateIds(f"ids already in the index: {present[:10]}")
        return array

    # ----------------------------------------------------------------------------------- searching

    def search(self, query, k: int = 10, prune: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents for one query.

        Parameters
        ----------
        query : str or list of str
            Raw text (tokenized like documents) or tokens. Empty queries and queries of only
            unknown terms give empty results.
        k : int
        prune : bool
            Skip blocks that cannot reach the top k (default). Results are identical either way.

        Returns
        -------
        ids : np.ndarray of int64, ``[n]`` with ``n <= k``, best first
        scores : np.ndarray of float64, ``[n]``
        """
        ids, scores = self.search_batch([query], k, prune=prune, parallel=False)
        found = ids[0] >= 0
        return ids[0][found], scores[0][found]

    def search_batch(self, queries: Sequence, k: int = 10, prune: bool = True,
                     parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents for each query, padded.

        Parameters
        ----------
        queries : sequence of (str or list of str), ``[n_queries]``
        k : int
        prune : bool
        parallel : bool
            Spread queries over numba's threads.

        Returns
        -------
        ids : np.ndarray of int64, ``[n_queries, k]``, best first, padded with -1
        scores : np.ndarray of float64, ``[n_queries, k]``, padded with -inf
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidSearchParameter(f"k must be an int >= 1; got {k!r}")
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise InvalidQuery("queries must be a list of queries (str or list of str)")
        query_ptr, query_terms, query_weights, baselines = self._prepare_queries(queries)
        num_queries = len(queries)
        out_slots = np.full((num_queries, k), -1, dtype=np.int64)
        out_scores = np.full((num_queries, k), -np.inf)
        out_sizes = np.zeros(num_queries, dtype=np.int64)
        if query_terms.size:
            postings = self._postings
            index_args = (postings.data, postings.term_block_start, postings.block_byte_start, postings.block_count,
                          postings.block_last_doc, postings.block_max_tf, postings.block_min_doc_length,
                          self._doc_lengths.astype(np.float64), self._avgdl(), self.params.code, self.params.k1,
                          self.params.b, self.params.delta, out_slots, out_scores, out_sizes)
            if parallel and num_queries > 1:
                num_chunks = min(num_queries, numba.get_num_threads() * 4)
                search_parallel(num_chunks, query_ptr, query_terms, query_weights, int(k), bool(prune), *index_args)
            else:
                search_range(0, num_queries, query_ptr, query_terms, query_weights, int(k), bool(prune), *index_args)
        found = out_slots >= 0
        ids = np.where(found, self._slot_ids[np.where(found, out_slots, 0)] if self._slot_ids.size else -1, -1)
        scores = np.where(found, out_scores + baselines[:, None], -np.inf)
        return ids, scores

    def _prepare_queries(self, queries):
        """Query terms as flat arrays: ``query_ptr [n+1]``, ``terms``, ``weights`` (count*idf), baselines ``[n]``."""
        live_docs = len(self._slot_of)
        doc_freq = self._postings.doc_freq
        avgdl = self._avgdl()
        absent = self.params.tfc_absent(avgdl) if live_docs else 0.0
        query_ptr, all_terms, all_weights = [0], [], []
        baselines = np.zeros(len(queries))
        for q, query in enumerate(queries):
            if isinstance(query, str):
                tokens = self.tokenizer(query)
            elif isinstance(query, (list, tuple)) and all(isinstance(tok, str) for tok in query):
                tokens = query
            else:
                raise InvalidQuery(f"query {q} is a {type(query).__name__}; queries must be str or lists of str")
            counts: dict[int, int] = {}
            for tok in tokens:
                term = self._vocab.get(tok)
                if term is not None and doc_freq[term] > 0:
                    counts[term] = counts.get(term, 0) + 1
            if counts:
                terms = np.fromiter(counts, dtype=np.int64, count=len(counts))
                weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
                weights *= self.params.idf(doc_freq[terms], live_docs)
                all_terms.append(terms)
                all_weights.append(weights)
                baselines[q] = float(weights.sum()) * absent
            query_ptr.append(query_ptr[-1] + len(counts))
        terms = np.concatenate(all_terms) if all_terms else np.empty(0, dtype=np.int64)
        weights = np.concatenate(all_weights) if all_weights else np.empty(0)
        return np.asarray(query_ptr, dtype=np.int64), terms, weights, baselines

    def _avgdl(self) -> float:
        live_lengths = self._doc_lengths[self._live]
        return float(live_lengths.mean()) if live_lengths.size and live_lengths.sum() > 0 else 1.0

    # ----------------------------------------------------------------------------------- inspection

    def stats(self) -> dict:
        """Sizes and counts, including compressed postings against raw int32 (doc id + tf) postings."""
        postings = self._postings
        raw = 8 * postings.num_postings
        compressed = postings.nbytes()
        return {
            "method": self.params.method,
            "num_documents": len(self._slot_of),
            "num_terms": int(np.count_nonzero(postings.doc_freq)),
            "num_postings": postings.num_postings,
            "num_blocks": int(postings.block_count.size),
            "block_size": self.block_size,
            "avg_doc_length": self._avgdl() if self._slot_of else 0.0,
            "compressed_postings_bytes": compressed,
            "varint_stream_bytes": int(postings.data.nbytes),
            "raw_int32_postings_bytes": raw,
            "compression_ratio": compressed / raw if raw else 0.0,
            "index_bytes": self.nbytes(),
        }

    def nbytes(self) -> int:
        """Bytes of the postings, block metadata and per-document arrays (the vocabulary not included)."""
        return (self._postings.nbytes() + self._slot_ids.nbytes + self._doc_lengths.nbytes + self._live.nbytes)

    # ----------------------------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (versioned, SHA-256 checksummed, no pickle)."""
        encoded = [term.encode("utf-8") for term in self._terms]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        arrays = {f"postings.{name}": array for name, array in self._postings.arrays().items()}
        arrays.update(
            vocab_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8), vocab_offsets=offsets,
            slot_ids=self._slot_ids, doc_lengths=self._doc_lengths, live=self._live)
        meta = {
            "method": self.params.method, "k1": self.params.k1, "b": self.params.b, "delta": self.params.delta,
            "block_size": self.block_size, "next_id": self._next_id,
            "tokenizer": {"lowercase": self.tokenizer.lowercase, "stopwords": sorted(self.tokenizer.stopwords),
                          "min_length": self.tokenizer.min_length},
        }
        persist.save(path, _FILE_KIND, _FILE_VERSION, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InvertedIndex":
        """Read an index written by :meth:`save`.

        Raises
        ------
        CorruptIndexFile
            Bad magic, version, checksum, kind, or inconsistent contents.
        """
        bundle = persist.load(path, _FILE_KIND)
        if bundle.kind_version != _FILE_VERSION:
            raise CorruptIndexFile(f"inverted index layout version {bundle.kind_version}; this build reads {_FILE_VERSION}")
        meta, arrays = bundle.meta, bundle.arrays
        try:
            tok = meta["tokenizer"]
            index = cls(meta["method"], meta["k1"], meta["b"], meta["delta"],
                        Tokenizer(tok["lowercase"], frozenset(tok["stopwords"]), tok["min_length"]), meta["block_size"])
            postings = postings_from_arrays(
                {name.split(".", 1)[1]: a for name, a in arrays.items() if name.startswith("postings.")},
                meta["block_size"])
            blob, offsets = arrays["vocab_bytes"].tobytes(), arrays["vocab_offsets"]
            terms = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(offsets.size - 1)]
            slot_ids, doc_lengths, live = arrays["slot_ids"], arrays["doc_lengths"], arrays["live"]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptIndexFile(f"inverted index file has inconsistent contents: {exc}") from None
        if not (slot_ids.size == doc_lengths.size == live.size) or len(terms) != postings.num_terms:
            raise CorruptIndexFile("inverted index arrays disagree in size")
        index._postings, index._terms = postings, terms
        index._vocab = {term: i for i, term in enumerate(terms)}
        index._slot_ids, index._doc_lengths, index._live = slot_ids, doc_lengths, live
        index._slot_of = {int(slot_ids[s]): int(s) for s in np.flatnonzero(live)}
        index._next_id = int(meta["next_id"])
        return index
