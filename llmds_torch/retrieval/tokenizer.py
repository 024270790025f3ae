"""The documented tokenizer for raw text: Unicode normalization, case folding, word split, stopwords.

1. The text is normalized to NFKC, so compatibility variants and composed / decomposed accents
   agree ("ｆｕｌｌ" = "full", "ｶﾀｶﾅ" = "カタカナ", "e" + U+0301 = "é").
2. When ``lowercase`` is set (the default), it is case-folded with ``str.casefold`` (so "Straße" =
   "STRASSE" and a final sigma "ς" = "σ"), "i" + U+0307 COMBINING DOT ABOVE (what "İ" folds to)
   becomes "i" (so "İstanbul", "ISTANBUL" and "istanbul" agree), and NFKC is applied again.
3. A token is a maximal run of word characters: letters, digits and underscore (Python's ``\\w``
   for str patterns) and combining marks (Unicode categories Mn, Mc, Me), so "हिन्दी" and "q̇" stay
   whole. Scripts written without spaces (Chinese, Japanese) give one token per run between
   punctuation or spaces; no dictionary segmentation is done.
4. Tokens in ``stopwords`` (normalized the same way) and tokens shorter than ``min_length``
   characters are dropped.

ASCII text skips steps 1-2 beyond lowercasing (they change nothing there). The character tables
are those of Python's ``unicodedata``. Pre-tokenized input bypasses the tokenizer entirely.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from llmds_torch.errors import ConfigError

from .errors import InvalidDocument

WORD_PATTERN = re.compile(r"\w+")  # ASCII text has no combining marks
_MARK_PLANES = (range(0x20000), range(0xE0000, 0xE1000))  # combining marks exist only in planes 0, 1 and 14


@functools.cache
def word_pattern() -> re.Pattern:
    """Runs of ``\\w`` or combining marks (categories M*), built once from ``unicodedata`` (about 50 ms)."""
    ranges, start, previous = [], None, None
    for plane in _MARK_PLANES:
        for code in plane:
            if unicodedata.category(chr(code))[0] == "M":
                if start is None or code != previous + 1:
                    if start is not None:
                        ranges.append((start, previous))
                    start = code
                previous = code
    ranges.append((start, previous))
    marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[\\w{marks}]+")


def normalize(text: str, casefold: bool = True) -> str:
    """NFKC, then (when ``casefold``) ``str.casefold`` with "i" + U+0307 -> "i" and NFKC again (see above)."""
    if text.isascii():
        return text.lower() if casefold else text
    text = unicodedata.normalize("NFKC", text)
    if casefold:
        text = unicodedata.normalize("NFKC", text.casefold().replace("i\u0307", "i"))
    return text


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
        Case-fold tokens (default True; see the module docstring). Text is NFKC-normalized either way.
    stopwords : frozenset of str
        Tokens to drop, normalized and folded like the text (default: none; see ``ENGLISH_STOPWORDS``).
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
        object.__setattr__(self, "stopwords", frozenset(normalize(word, self.lowercase) for word in self.stopwords))
        if not isinstance(self.min_length, int) or self.min_length < 1:
            raise ConfigError(f"min_length must be an int >= 1; got {self.min_length!r}")

    def __call__(self, text: str) -> list[str]:
        """Tokens of one text, in order (duplicates kept)."""
        if not isinstance(text, str):
            raise InvalidDocument(f"the tokenizer takes str; got {type(text).__name__}")
        ascii_only = text.isascii()
        text = normalize(text, self.lowercase)
        tokens = (WORD_PATTERN if ascii_only else word_pattern()).findall(text)
        if self.stopwords or self.min_length > 1:
            tokens = [t for t in tokens if len(t) >= self.min_length and t not in self.stopwords]
        return tokens

    def many(self, texts) -> list[list[str]]:
        """Tokens of each text: ``[n_texts]`` lists."""
        return [self(text) for text in texts]
