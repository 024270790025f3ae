"""BM25 scoring formulas as small pure functions, picked by name.

A document's score for a query is ``sum over query terms t of idf(t) * tfc(tf(t, d), |d|)``, with
``tf`` the term's count in the document, ``|d|`` the document length in tokens and ``avgdl`` the
mean length. Variants, with the parameter names of bm25s (``k1``, ``b``, ``delta``)::

    method      idf(df, N)                                  tfc(tf, |d|)   with L = 1 - b + b*|d|/avgdl
    robertson   log(max(1, (N - df + 0.5) / (df + 0.5)))    tf / (k1*L + tf)
    lucene      log(1 + (N - df + 0.5) / (df + 0.5))        tf / (k1*L + tf)
    atire       log(N / df)                                 tf*(k1 + 1) / (tf + k1*L)
    bm25l       log((N + 1) / (df + 0.5))                   (k1 + 1)*(c + delta) / (k1 + c + delta),  c = tf / L
    bm25+       log((N + 1) / df)                           (k1 + 1)*tf / (k1*L + tf) + delta

These follow bm25s (its Robertson idf is clipped at zero). For bm25l and bm25+, ``tfc(0)`` is not
zero: a query term absent from a document still adds ``idf * tfc(0)``, which for these variants does
not depend on the document. Every idf is >= 0 and every tfc grows with ``tf`` and shrinks with
``|d|``; the index's pruning relies on both facts.

The ``tfc_*`` functions are numba-compiled so the search loops can call them; they take scalars or
numpy arrays from Python alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from llmds_torch.errors import ConfigError


def idf_robertson(doc_freq, num_docs):
    return np.log(np.maximum(1.0, (num_docs - doc_freq + 0.5) / (doc_freq + 0.5)))


def idf_lucene(doc_freq, num_docs):
    return np.log(1.0 + (num_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def idf_atire(doc_freq, num_docs):
    return np.log(num_docs / doc_freq)


def idf_bm25l(doc_freq, num_docs):
    return np.log((num_docs + 1.0) / (doc_freq + 0.5))


def idf_bm25plus(doc_freq, num_docs):
    return np.log((num_docs + 1.0) / doc_freq)


@numba.njit(cache=True)
def tfc_robertson(tf, doc_length, avgdl, k1, b, delta):
    return tf / (k1 * (1.0 - b + b * doc_length / avgdl) + tf)


@numba.njit(cache=True)
def tfc_lucene(tf, doc_length, avgdl, k1, b, delta):
    return tf / (k1 * (1.0 - b + b * doc_length / avgdl) + tf)


@numba.njit(cache=True)
def tfc_atire(tf, doc_length, avgdl, k1, b, delta):
    return tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * doc_length / avgdl))


@numba.njit(cache=True)
def tfc_bm25l(tf, doc_length, avgdl, k1, b, delta):
    c = tf / (1.0 - b + b * doc_length / avgdl)
    return (k1 + 1.0) * (c + delta) / (k1 + c + delta)


@numba.njit(cache=True)
def tfc_bm25plus(tf, doc_length, avgdl, k1, b, delta):
    return (k1 + 1.0) * tf / (k1 * (1.0 - b + b * doc_length / avgdl) + tf) + delta


METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
_IDF = {"lucene": idf_lucene, "robertson": idf_robertson, "atire": idf_atire, "bm25l": idf_bm25l,
        "bm25+": idf_bm25plus}
_TFC = {"lucene": tfc_lucene, "robertson": tfc_robertson, "atire": tfc_atire, "bm25l": tfc_bm25l,
        "bm25+": tfc_bm25plus}


@numba.njit(cache=True)
def tfc_by_code(code, tf, doc_length, avgdl, k1, b, delta):
    """The tfc of ``METHODS[code]``, for compiled loops that cannot take a function argument cheaply."""
    if code == 0:
        return tfc_lucene(tf, doc_length, avgdl, k1, b, delta)
    if code == 1:
        return tfc_robertson(tf, doc_length, avgdl, k1, b, delta)
    if code == 2:
        return tfc_atire(tf, doc_length, avgdl, k1, b, delta)
    if code == 3:
        return tfc_bm25l(tf, doc_length, avgdl, k1, b, delta)
    return tfc_bm25plus(tf, doc_length, avgdl, k1, b, delta)


@numba.njit(cache=True)
def idf_by_code(code, doc_freq, num_docs):
    """The idf of ``METHODS[code]`` for one term (scalars), for compiled loops; same formulas as ``idf_*``."""
    df = np.float64(doc_freq)
    n = np.float64(num_docs)
    if code == 0:
        return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    if code == 1:
        return np.log(max(1.0, (n - df + 0.5) / (df + 0.5)))
    if code == 2:
        return np.log(n / df)
    if code == 3:
        return np.log((n + 1.0) / (df + 0.5))
    return np.log((n + 1.0) / df)


_PARAMETER_RANGES = (("k1", 0.0, np.inf), ("b", 0.0, 1.0), ("delta", 0.0, np.inf))


@dataclass(frozen=True, slots=True)
class BM25Params:
    """Which variant and its parameters (names as bm25s has them).

    Parameters
    ----------
    method : str
        One of ``METHODS``: "lucene" (default), "robertson", "atire", "bm25l", "bm25+".
    k1 : float
        Term-frequency saturation, > 0 (default 1.5).
    b : float
        Length normalization in [0, 1] (default 0.75).
    delta : float
        The lower bound added by bm25l and bm25+, >= 0 (default 0.5; unused by the others).
    """

    method: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    delta: float = 0.5

    def __post_init__(self):
        for name, low, high in _PARAMETER_RANGES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (low <= value <= high) or np.isnan(value):
                raise ConfigError(f"{name} must be a number in [{low}, {high}]; got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.method not in METHODS:
            raise ConfigError(f"unknown BM25 method {self.method!r}; choose one of {METHODS}")
        if self.k1 == 0.0:  # tfc(0) would be 0 / 0 for every method
            raise ConfigError("k1 must be > 0 (with k1 = 0 the score of an absent term is 0 / 0)")

    @property
    def code(self) -> int:
        """Index of the method in ``METHODS`` (what :func:`tfc_by_code` takes)."""
        return METHODS.index(self.method)

    def idf(self, doc_freq, num_docs):
        """idf of terms with document frequencies ``doc_freq`` (array ``[n_terms]``, each >= 1)."""
        return _IDF[self.method](np.asarray(doc_freq, dtype=np.float64), float(num_docs))

    def tfc(self, tf, doc_length, avgdl):
        """Term-frequency component; ``tf`` and ``doc_length`` broadcast (scalars or arrays)."""
        return _TFC[self.method](np.asarray(tf, dtype=np.float64), np.asarray(doc_length, dtype=np.float64),
                                 float(avgdl), self.k1, self.b, self.delta)
