"""The compiled checked varint decoder against the numpy one on arbitrary bytes, and the postings
validation refusing overlong varints."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.retrieval.errors import CorruptVarint
from llmds_torch.retrieval.postings import encode_blocked_postings, postings_from_arrays
from llmds_torch.retrieval.varint import decode_uvarint, decode_uvarint_numba


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_compiled_decoder_agrees_with_numpy_on_any_bytes(data):
    try:
        expected = decode_uvarint(data)
    except CorruptVarint:
        expected = None
    count = expected.size if expected is not None else len(data)
    try:
        got = decode_uvarint_numba(data, count)
    except CorruptVarint:
        got = None
    if expected is None:
        assert got is None
    else:
        np.testing.assert_array_equal(got, expected)


def test_postings_with_an_overlong_varint_are_refused():
    postings = encode_blocked_postings([0], [5], [1], num_terms=1, block_size=4)
    arrays = postings.arrays()
    assert arrays["data"].tolist() == [1, (5 << 1) | 1]
    postings_from_arrays(arrays, 4, 1, num_slots=10)  # the canonical bytes load
    overlong = dict(arrays, data=np.array([1, ((5 << 1) | 1) | 0x80, 0x00], dtype=np.uint8))
    with pytest.raises(CorruptVarint):
        postings_from_arrays(overlong, 4, 1, num_slots=10)
