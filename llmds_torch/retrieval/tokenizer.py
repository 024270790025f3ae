"""The documented tokenizer for raw text: Unicode word split, lowercase, optional stopwords.

A token is a maximal run of Unicode word characters (letters, digits, marks and underscore, as
Python's ``re`` defines ``\\w`` for str patterns). Tokens are lowercased with ``str.lower`` when
``lowercase`` is set, then tokens in ``stopwords`` and tokens shorter than ``min_length`` characters
are dropped. Pre-tokenized input bypasses the tokenizer entirely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmds_torch.errors import ConfigError

from .errors import InvalidDocument

WORD_PATTERN = re.compile(r"\w+")

# A short English list (articles, pronouns, auxiliaries, prepositions); pass your own for other needs.
ENGLISH_STOPWORDS = frozenset(
    """a an and are as at be been but by can do does for from had has have he her his i if in into is
    it its of on or our she so than that the their them then there these they this to was we were what
    when where which who will with would you your""".split()
)


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """Split raw text into tokens.

    Parameters
    ----------
    lowercase : bool
        Lowercase tokens (default True).
    stopwords : frozenset of str
        Tokens to drop, compared after lowercasing (default: none; see ``ENGLISH_STOPWORDS``).
    min_length : int
        Drop tokens shorter than this many characters (default 1: keep all).
    """

    lowercase: bool = True
    stopwords: frozenset = frozenset()
    min_length: int = 1

    def __post_init__(self):
        if not isinstance(self.stopwords, frozenset):
            object.__setattr__(self, "stopwords", frozenset(self.stopwords))
        if not all(isinstance(word, str) for word in self.stopwords):
            raise ConfigError("stopwords must be strings")
        if not isinstance(self.min_length, int) or self.min_length < 1:
            raise ConfigError(f"min_length must be an int >= 1; got {self.min_length!r}")

    def __call__(self, text: str) -> list[str]:
        """Tokens of one text, in order (duplicates kept)."""
        if not isinstance(text, str):
            raise InvalidDocument(f"the tokenizer takes str; got {type(text).__name__}")
        if self.lowercase:
            text = text.lower()
        tokens = WORD_PATTERN.findall(text)
        if self.stopwords or self.min_length > 1:
            tokens = [t for t in tokens if len(t) >= self.min_length and t not in self.stopwords]
        return tokens

    def many(self, texts) -> list[list[str]]:
        """Tokens of each text: ``[n_texts]`` lists."""
        return [self(text) for text in texts]
