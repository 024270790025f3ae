"""Codec round trips (hypothesis) at the edges, and malformed bytes refused with a named error."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.errors import LLMDSError
from llmds_torch.retrieval.codec import (
    UnsortedIds,
    decode_blocked_postings,
    decode_svarint,
    decode_uvarint,
    decode_uvarint_numba,
    delta_decode,
    delta_encode,
    encode_blocked_postings,
    encode_svarint,
    encode_uvarint,
    uvarint_lengths,
    zigzag_decode,
    zigzag_encode,
)
from llmds_torch.retrieval.errors import CorruptVarint

UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
unsigned = st.one_of(st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**63 - 1, 2**63, UINT64_MAX]),
                     st.integers(0, UINT64_MAX))
signed = st.one_of(st.sampled_from([0, -1, 1, -64, 63, -65, 64, INT64_MIN, INT64_MIN + 1, INT64_MAX]),
                   st.integers(INT64_MIN, INT64_MAX))


@settings(max_examples=200, deadline=None)
@given(st.lists(unsigned, max_size=64))
def test_uvarint_round_trip(values):
    array = np.array(values, dtype=np.uint64)
    encoded = encode_uvarint(array)
    assert encoded.size == int(uvarint_lengths(array).sum())
    np.testing.assert_array_equal(decode_uvarint(encoded, count=len(values)), array)
    np.testing.assert_array_equal(decode_uvarint_numba(encoded, len(values)), array)


@settings(max_examples=200, deadline=None)
@given(st.lists(signed, max_size=64))
def test_svarint_and_zigzag_round_trip(values):
    array = np.array(values, dtype=np.int64)
    np.testing.assert_array_equal(zigzag_decode(zigzag_encode(array)), array)
    np.testing.assert_array_equal(decode_svarint(encode_svarint(array)), array)


def test_known_encodings():
    # LEB128 examples: 300 = 0b10_0101100 -> 0xAC 0x02; the uint64 maximum takes ten bytes.
    assert encode_uvarint([0, 127, 128, 300]).tolist() == [0x00, 0x7F, 0x80, 0x01, 0xAC, 0x02]
    assert encode_uvarint([2**63 - 1]).size == 9
    assert encode_uvarint(np.array([UINT64_MAX], dtype=np.uint64)).tolist() == [0xFF] * 9 + [0x01]
    assert zigzag_encode([0, -1, 1, -2, INT64_MAX, INT64_MIN]).tolist() == [0, 1, 2, 3, UINT64_MAX - 1, UINT64_MAX]


@pytest.mark.parametrize(
    "bad, what",
    [
        (b"\x80", "truncated"),
        (b"\x01\xff\xff", "truncated"),
        (b"\x80\x00", "overlong"),
        (b"\xff\x80\x00", "overlong"),
        (b"\xff" * 10 + b"\x01", "overlong"),
        (b"\xff" * 9 + b"\x02", "64 bits"),
    ],
)
def test_malformed_bytes_raise(bad, what):
    with pytest.raises(CorruptVarint, match=what):
        decode_uvarint(bad)
    with pytest.raises(CorruptVarint):
        decode_uvarint_numba(bad, 1)
    assert issubclass(CorruptVarint, LLMDSError) and issubclass(CorruptVarint, ValueError)


def test_count_mismatch_and_wrong_inputs():
    with pytest.raises(CorruptVarint, match="expected 3"):
        decode_uvarint(encode_uvarint([1, 2]), count=3)
    with pytest.raises(CorruptVarint):
        decode_uvarint_numba(encode_uvarint([1, 2]), 1)
    with pytest.raises(ValueError, match="non-negative"):
        encode_uvarint(np.array([1, -1]))
    with pytest.raises(TypeError):
        encode_uvarint(np.array([1.5]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=50))
def test_delta_round_trip(values):
    ids = np.sort(np.array(values, dtype=np.uint64))
    np.testing.assert_array_equal(delta_decode(delta_encode(ids)), ids)


def test_delta_refuses_unsorted():
    with pytest.raises(UnsortedIds):
        delta_encode([3, 2])


@pytest.mark.parametrize("block_size", [1, 7, 128])
def test_blocked_postings_round_trip_and_block_maxima(block_size):
    rng = np.random.default_rng(3)
    num_terms, num_docs = 40, 3000
    keys = np.unique(rng.integers(0, num_terms, 8000) * num_docs + rng.zipf(1.3, 8000) % num_docs)
    terms, docs = keys // num_docs, keys % num_docs
    tfs = rng.integers(1, 20, keys.size)
    doc_lengths = rng.integers(1, 500, num_docs)
    order = rng.permutation(keys.size)  # any input order
    postings = encode_blocked_postings(terms[order], docs[order], tfs[order], doc_lengths, num_terms, block_size)
    t, d, f = decode_blocked_postings(postings)
    np.testing.assert_array_equal(t, terms)
    np.testing.assert_array_equal(d, docs)
    np.testing.assert_array_equal(f, tfs)
    for term in range(num_terms):  # block maxima against a plain loop
        mask = terms == term
        term_docs, term_tfs = docs[mask], tfs[mask]
        first, last = postings.term_block_start[term], postings.term_block_start[term + 1]
        for j, block in enumerate(range(first, last)):
            chunk = slice(j * block_size, (j + 1) * block_size)
            assert postings.block_last_doc[block] == term_docs[chunk][-1]
            assert postings.block_max_tf[block] == term_tfs[chunk].max()
            assert postings.block_min_doc_length[block] == doc_lengths[term_docs[chunk]].min()
            assert postings.block_count[block] == term_docs[chunk].size
    if block_size >= 7:  # with one-posting blocks the per-block metadata outweighs the savings
        assert postings.nbytes() < keys.size * 8


def test_blocked_postings_refuse_duplicate_pairs():
    with pytest.raises(UnsortedIds):
        encode_blocked_postings([0, 0], [5, 5], [1, 2], np.ones(6), 1)
