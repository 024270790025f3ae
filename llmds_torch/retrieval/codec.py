"""The integer codecs (:mod:`.varint`) and the BM25 postings format (:mod:`.postings`) under one name."""

from .postings import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    BlockedPostings,
    block_max_impacts,
    decode_blocked_postings,
    encode_blocked_postings,
    postings_from_arrays,
)
from .varint import (
    MAX_VARINT_BYTES,
    UnsortedIds,
    decode_svarint,
    decode_uvarint,
    decode_uvarint_numba,
    delta_decode,
    delta_encode,
    encode_svarint,
    encode_uvarint,
    uvarint_lengths,
    zigzag_decode,
    zigzag_encode,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE", "MAX_BLOCK_SIZE", "MAX_VARINT_BYTES", "BlockedPostings", "UnsortedIds",
    "block_max_impacts", "decode_blocked_postings", "encode_blocked_postings", "postings_from_arrays",
    "decode_svarint", "decode_uvarint", "decode_uvarint_numba", "delta_decode", "delta_encode", "encode_svarint",
    "encode_uvarint", "uvarint_lengths", "zigzag_decode", "zigzag_encode",
]
