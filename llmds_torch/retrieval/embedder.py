"""Text embedders: a deterministic hashing embedder, and a sentence-embedding model when installed.

:class:`HashingEmbedder` maps word unigrams and bigrams (from the retrieval :class:`Tokenizer`) to
``dim`` buckets by a stable hash (BLAKE2b keyed by the seed, not Python's salted ``hash``), adds
+1 or -1 by one hash bit (signed feature hashing, so collisions cancel on average instead of
piling up), and L2-normalizes. Texts with no tokens embed as one fixed "empty" feature so every
vector has a norm. It needs no download and gives the same vectors on every machine.

:func:`load_sentence_embedder` uses a locally installed ``sentence_transformers`` model only if
the package imports and the model is already on disk; it never downloads.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from llmds_torch.errors import ConfigError

from .errors import InvalidDocument
from .tokenizer import Tokenizer

_EMPTY_FEATURE = "\x00empty"


@lru_cache(maxsize=1 << 18)
def _feature_hash(feature: str, seed: int) -> int:
    key = seed.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8, key=key).digest(), "little")


class HashingEmbedder:
    """Signed feature hashing of unigrams and bigrams.

    Parameters
    ----------
    dim : int
        Output dimension (buckets), >= 2.
    seed : int
        Picks the hash; the same seed gives the same vectors everywhere.
    tokenizer : Tokenizer, optional
    """

    def __init__(self, dim: int = 256, seed: int = 0, tokenizer: Tokenizer | None = None):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
            raise ConfigError(f"dim must be an int >= 2; got {dim!r}")
        if not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(f"seed must be an int in [0, 2**63); got {seed!r}")
        self.dim, self.seed = dim, seed
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()

    def features(self, text: str) -> list[str]:
        """Unigrams and space-joined bigrams of ``text``."""
        tokens = self.tokenizer(text)
        grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
        return grams or [_EMPTY_FEATURE]

    def embed(self, texts) -> torch.Tensor:
        """Embed texts.

        Parameters
        ----------
        texts : sequence of str, ``[n]``

        Returns
        -------
        torch.Tensor of float32, ``[n, dim]``, rows of unit L2 norm.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidDocument("embed takes a list of str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self.features(text):
                h = _feature_hash(feature, self.seed)
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # Colliding signed features can cancel to zero; fall back to the "empty" feature's bucket.
        zero = norms[:, 0] == 0
        if zero.any():
            h = _feature_hash(_EMPTY_FEATURE, self.seed)
            out[zero, h % self.dim] = 1.0
            norms[zero] = 1.0
        return torch.from_numpy(out / norms)


class SentenceEmbedder:
    """Wraps a local sentence-transformers model to the ``dim`` / ``embed`` interface."""

    def __init__(self, model):
        self.model = model
        self.dim = int(model.get_sentence_embedding_dimension())

    def embed(self, texts) -> torch.Tensor:
        """``[n]`` texts -> float32 ``[n, dim]``, L2-normalized."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidDocument("embed takes a list of str")
        vectors = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32))


def load_sentence_embedder(model_name: str = "sentence-transformers/all-MiniLM-L6-v2") -> SentenceEmbedder | None:
    """A :class:`SentenceEmbedder` if ``sentence_transformers`` and the model are installed locally, else None."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    try:
        return SentenceEmbedder(SentenceTransformer(model_name, local_files_only=True))
    except Exception:  # not on disk (or unloadable): never download
        return None


def default_embedder(dim: int = 256, seed: int = 0):
    """A local sentence-embedding model when one is installed, else ``HashingEmbedder(dim, seed)``."""
    return load_sentence_embedder() or HashingEmbedder(dim, seed)
