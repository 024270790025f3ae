"""A small pickle-free file format for named numpy arrays plus a JSON header.

Layout (all integers little-endian)::

    magic        8 bytes   b"LLMDSPK\\x00"
    version      uint32    FORMAT_VERSION
    header_len   uint64
    header       header_len bytes of UTF-8 JSON:
                 {"kind": str, "kind_version": int, "meta": {...},
                  "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    payload      the arrays' raw bytes, C order, at the offsets the header gives
    trailer      32 bytes: SHA-256 of everything above, or HMAC-SHA256 of it when a key is given

Only plain numeric and boolean dtypes are allowed, so loading never runs code. Every check
(magic, version, trailer, kind, header structure, array bounds, boolean values) happens before
anything is returned, and no array is allocated larger than the bytes the file holds for it.

What the trailer promises
-------------------------
Without a key, the SHA-256 trailer catches accidents (truncation, bit rot, a partial copy), not
intent: anyone who can edit a file can recompute it. That is why every ``load`` also checks the
contents themselves (see :mod:`llmds_torch.retrieval.validation`): a crafted file with a valid
checksum is refused with ``CorruptIndexFile`` rather than crashing the process, returning deleted
documents or allocating more memory than the file describes. It may still hold *wrong but
consistent* data (other vectors, other documents): only a key can rule that out.

With ``key=`` (bytes, the same on save and load) the trailer is an HMAC-SHA256 of the file, so a
file that loads was written by someone holding the key and not modified since. Use a key for files
that cross a trust boundary; keep it secret, and use distinct keys for distinct trust domains.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmds_torch.errors import ConfigError

from .errors import CorruptIndexFile

MAGIC = b"LLMDSPK\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_CHECKSUM_BYTES = 32
_ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]
)
_MAX_NDIM = 8


def _trailer(body: bytes, key: bytes | None) -> bytes:
    """SHA-256 of ``body``, or its HMAC-SHA256 under ``key``."""
    if key is None:
        return hashlib.sha256(body).digest()
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise ConfigError(f"key must be non-empty bytes; got {type(key).__name__}")
    return hmac.new(bytes(key), body, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Bundle:
    """What :func:`loads` returns: the producer's kind and version, its metadata and arrays."""

    kind: str
    kind_version: int
    meta: dict
    arrays: dict


def dumps(kind: str, kind_version: int, arrays: dict, meta: dict | None = None, key: bytes | None = None) -> bytes:
    """Serialize named arrays and a JSON-able ``meta`` dict to bytes.

    Parameters
    ----------
    kind : str
        What produced the file (``"inverted_index"``, ``"count_min_sketch"``, ...); checked on load.
    kind_version : int
        The producer's own layout version, so it can refuse files it does not understand.
    arrays : dict[str, np.ndarray]
        Any shapes; dtypes must be plain numeric or boolean.
    meta : dict, optional
        JSON-serializable metadata.
    key : bytes, optional
        Sign the file with HMAC-SHA256 under this key instead of a plain SHA-256 checksum.
    """
    entries, chunks, offset = [], [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype.str not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {array.dtype}; allowed: bool, ints, floats")
        raw = array.astype(dtype, copy=False).tobytes()
        entries.append(
            {"name": name, "dtype": dtype.str, "shape": list(array.shape), "offset": offset, "nbytes": len(raw)}
        )
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps(
        {"kind": kind, "kind_version": int(kind_version), "meta": meta or {}, "arrays": entries},
        sort_keys=True,
    ).encode("utf-8")
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(chunks)
    return body + _trailer(body, key)


def loads(data: bytes, expected_kind: str, key: bytes | None = None) -> Bundle:
    """Parse bytes written by :func:`dumps`, checking magic, version, trailer, kind and header.

    ``key`` must be the key the file was written with (``None`` for a plain checksum).

    Raises
    ------
    CorruptIndexFile
        If anything does not check out; the message says what.
    """
    data = bytes(data)
    if len(data) < _PREFIX.size + _CHECKSUM_BYTES:
        raise CorruptIndexFile(f"file is {len(data)} bytes, shorter than the smallest valid file")
    magic, version, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptIndexFile(f"bad magic {magic!r}; expected {MAGIC!r} (not an llmds_torch file)")
    if version != FORMAT_VERSION:
        raise CorruptIndexFile(f"file format version {version}; this build reads version {FORMAT_VERSION}")
    body, trailer = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if not hmac.compare_digest(_trailer(body, key), trailer):
        if key is None:
            raise CorruptIndexFile("SHA-256 checksum mismatch: the file was truncated or modified (or was "
                                   "written with a key; pass key=)")
        raise CorruptIndexFile("HMAC-SHA256 mismatch: the file was not written with this key, or was modified")
    header_end = _PREFIX.size + header_len
    if header_end > len(body):
        raise CorruptIndexFile(f"header length {header_len} runs past the end of the file")
    try:
        header = json.loads(body[_PREFIX.size:header_end].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, ints past Python's digit limit
        raise CorruptIndexFile(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptIndexFile("header is not a JSON object")
    if header.get("kind") != expected_kind:
        raise CorruptIndexFile(f"file holds a {header.get('kind')!r}; expected a {expected_kind!r}")
    kind_version, meta, entries = header.get("kind_version"), header.get("meta"), header.get("arrays")
    if type(kind_version) is not int or not isinstance(meta, dict) or not isinstance(entries, list):
        raise CorruptIndexFile("header fields kind_version (int), meta (object) and arrays (list) are required")
    payload = body[header_end:]
    arrays = {}
    for entry in entries:
        name, dtype, shape = _check_entry(entry, len(payload))
        if name in arrays:
            raise CorruptIndexFile(f"array {name!r} appears twice in the header")
        start, nbytes = entry["offset"], entry["nbytes"]
        array = np.frombuffer(payload, dtype=dtype, count=nbytes // dtype.itemsize, offset=start).reshape(shape)
        if dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
            raise CorruptIndexFile(f"array {name!r} is boolean but holds bytes other than 0 and 1")
        arrays[name] = array.copy()
    return Bundle(expected_kind, kind_version, meta, arrays)


def _check_entry(entry, payload_bytes: int) -> tuple:
    """Check one header entry against the payload; return ``(name, dtype, shape)``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CorruptIndexFile("an array entry of the header is not an object with a string name")
    name, dtype_str, shape = entry["name"], entry.get("dtype"), entry.get("shape")
    if dtype_str not in _ALLOWED_DTYPES:
        raise CorruptIndexFile(f"array {name!r} has disallowed dtype {dtype_str!r}")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(type(size) is int and size >= 0 for size in shape)):
        raise CorruptIndexFile(f"array {name!r} has shape {shape!r}; expected a list of at most {_MAX_NDIM} "
                               f"non-negative ints")
    start, nbytes = entry.get("offset"), entry.get("nbytes")
    if type(start) is not int or type(nbytes) is not int or start < 0 or nbytes < 0:
        raise CorruptIndexFile(f"array {name!r} has offset {start!r} and nbytes {nbytes!r}; expected ints >= 0")
    dtype = np.dtype(dtype_str)
    if start + nbytes > payload_bytes or nbytes != math.prod(shape) * dtype.itemsize:
        raise CorruptIndexFile(f"array {name!r} does not fit its declared shape or the file")
    return name, dtype, tuple(shape)


def save(path: str | os.PathLike, kind: str, kind_version: int, arrays: dict, meta: dict | None = None,
         key: bytes | None = None) -> None:
    """Write :func:`dumps` output to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    data = dumps(kind, kind_version, arrays, meta, key)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load(path: str | os.PathLike, expected_kind: str, key: bytes | None = None) -> Bundle:
    """Read a file written by :func:`save`; see :func:`loads`."""
    return loads(Path(path).read_bytes(), expected_kind, key)
