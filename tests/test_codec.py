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
    postings_from_arrays,
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


def _python_postings(data, pos, count):
    """Plain-loop reference decoder of ``count`` postings from ``pos``: [(gap, tf)], end position."""
    def varint(pos):
        value, shift = 0, 0
        while True:
            byte = int(data[pos])
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
    out = []
    for _ in range(count):
        code, pos = varint(pos)
        tf = 1
        if code % 2 == 0:
            tf, pos = varint(pos)
            tf += 2
        out.append((code >> 1, tf))
    return out, pos


def _random_postings(seed, num_terms=40, num_docs=3000, size=8000):
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, num_terms, size) * num_docs + rng.zipf(1.3, size) % num_docs)
    terms, docs = keys // num_docs, keys % num_docs
    tfs = np.where(rng.random(keys.size) < 0.6, 1, rng.integers(2, 300, keys.size))
    impacts = rng.random(keys.size) * 3 + 0.1
    return terms, docs, tfs, impacts


@pytest.mark.parametrize("block_size", [1, 7, 128])
def test_blocked_postings_round_trip_and_block_maxima(block_size):
    terms, docs, tfs, impacts = _random_postings(3)
    num_terms = 43  # three terms without postings
    order = np.random.default_rng(0).permutation(terms.size)  # any input order
    postings = encode_blocked_postings(terms[order], docs[order], tfs[order], num_terms, block_size, impacts[order])
    t, d, f = decode_blocked_postings(postings)
    np.testing.assert_array_equal(t, terms)
    np.testing.assert_array_equal(d, docs)
    np.testing.assert_array_equal(f, tfs)
    np.testing.assert_array_equal(postings.doc_freq(), np.bincount(terms, minlength=num_terms))
    expected_blocks = 0
    for term in range(num_terms):  # every term and block against a plain loop
        mask = terms == term
        term_docs, term_tfs, term_impacts = docs[mask], tfs[mask], impacts[mask]
        data = postings.data
        pos = int(postings.term_byte_start[term])
        assert int(data[pos]) == term_docs.size or term_docs.size > 127
        if term_docs.size <= block_size:  # one block: no metadata, decodes from the header on
            got, _ = _python_postings(data, pos + 1, term_docs.size) if term_docs.size < 128 else (None, None)
            if got is not None:
                assert [g for g, _ in got] == np.diff(term_docs, prepend=0).tolist()
                assert [tf for _, tf in got] == term_tfs.tolist()
            continue
        num_blocks = -(-term_docs.size // block_size)
        first_block = expected_blocks
        expected_blocks += num_blocks
        for j in range(num_blocks):
            block = first_block + j
            chunk = slice(j * block_size, (j + 1) * block_size)
            base = int(term_docs[j * block_size - 1]) if j else 0
            got, _ = _python_postings(data, int(postings.block_byte_start[block]), term_docs[chunk].size)
            assert (base + np.cumsum([g for g, _ in got])).tolist() == term_docs[chunk].tolist()
            assert [tf for _, tf in got] == term_tfs[chunk].tolist()
            assert postings.block_last_doc[block] == term_docs[chunk][-1]
            true_max = term_impacts[chunk].max()
            assert postings.block_max_impact[block] >= true_max  # rounded up: a safe bound
            assert postings.block_max_impact[block] == pytest.approx(true_max, rel=1e-6)
    assert postings.num_blocks == expected_blocks
    if block_size >= 7:
        assert postings.nbytes() < terms.size * 8


def test_blocked_postings_known_bytes():
    # Term 0: (doc 3, tf 1), (doc 5, tf 4) -> df 2; (3 << 1) | 1 = 7; (2 << 1) | 0 = 4 then tf - 2 = 2.
    # Term 1: (doc 0, tf 2) -> df 1; (0 << 1) | 0 = 0 then 0.
    postings = encode_blocked_postings([0, 1, 0], [5, 0, 3], [4, 2, 1], 2, block_size=4)
    assert postings.data.tolist() == [2, 7, 4, 2, 1, 0, 0]
    assert postings.term_byte_start.tolist() == [0, 4]
    assert postings.num_blocks == 0 and postings.nbytes() == 7 + 2 * 4


def test_blocked_postings_corruption_is_detected():
    terms, docs, tfs, impacts = _random_postings(4)
    postings = encode_blocked_postings(terms, docs, tfs, 40, 16, impacts)
    arrays = postings.arrays()
    truncated = dict(arrays, data=arrays["data"][:-3])
    moved = dict(arrays, block_byte_start=arrays["block_byte_start"] + 1)
    wrong_last = dict(arrays, block_last_doc=arrays["block_last_doc"] - 1)
    for bad in (truncated, moved, wrong_last):
        with pytest.raises(CorruptVarint):
            postings_from_arrays(bad, 16, postings.num_postings, 3000)
    with pytest.raises(CorruptVarint):
        postings_from_arrays(arrays, 16, postings.num_postings, int(docs.max()))  # a doc id past the documents
    with pytest.raises(CorruptVarint):
        postings_from_arrays(dict(arrays, block_max_impact=arrays["block_max_impact"].astype(np.float64)), 16,
                             postings.num_postings, 3000)
    assert postings_from_arrays(arrays, 16, postings.num_postings, 3000).num_postings == terms.size


def test_blocked_postings_refuse_duplicate_pairs():
    with pytest.raises(UnsortedIds):
        encode_blocked_postings([0, 0], [5, 5], [1, 2], 1)
