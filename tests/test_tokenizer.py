"""Unicode tokens: NFKC, casefold, combining marks inside words, in several scripts."""

import unicodedata

import pytest

from llmds_torch.retrieval import InvertedIndex, Tokenizer


@pytest.mark.parametrize("text, tokens", [
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),                           # Devanagari: vowel signs and virama are marks
    ("İstanbul ISTANBUL istanbul", ["istanbul"] * 3),            # Turkish dotted capital I
    ("ΛΌΓΟΣ λόγος Λόγος", ["λόγοσ"] * 3),                        # Greek final sigma folds to sigma
    ("東京タワー。日本語のテキスト", ["東京タワー", "日本語のテキスト"]),  # CJK: runs between punctuation
    ("ｆｕｌｌ-width ｶﾀｶﾅ", ["full", "width", "カタカナ"]),           # compatibility forms
    ("cafe\u0301 café CAFÉ", ["café"] * 3),                       # decomposed and composed accents
    ("q\u0307 Straße STRASSE", ["q\u0307", "strasse", "strasse"]),  # a mark with no composed form; ß
    ("Hello, World_1! 42", ["hello", "world_1", "42"]),
])
def test_tokens_in_several_scripts(text, tokens):
    assert Tokenizer()(text) == tokens


def test_decomposed_text_is_tokenized_like_composed():
    text = "Ἀθῆναι नमस्ते Ça résumé Ελλάδα"
    assert Tokenizer()(unicodedata.normalize("NFD", text)) == Tokenizer()(text)


def test_lowercase_off_keeps_case_but_normalizes():
    assert Tokenizer(lowercase=False)("ＡＢＣ cafe\u0301 Straße") == ["ABC", "café", "Straße"]


def test_stopwords_are_folded_like_text():
    tokenizer = Tokenizer(stopwords={"The", "İS"})
    assert tokenizer("THE city IS İstanbul") == ["city", "istanbul"]


@pytest.mark.parametrize("query", ["istanbul", "ISTANBUL", "İstanbul"])
def test_index_matches_across_case_and_script_forms(query):
    index = InvertedIndex()
    index.add(["Welcome to İstanbul", "हिन्दी भाषा", "οδός", "nothing"])
    assert index.search(query, 2)[0].tolist() == [0]
    assert index.search("भाषा", 2)[0].tolist() == [1]
    assert index.search("ΟΔΌΣ", 2)[0].tolist() == [2]
