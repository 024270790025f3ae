"""A small pickle-free file format for named numpy arrays plus a JSON header.

Layout (all integers little-endian)::

    magic        8 bytes   b"LLMDSPK\\x00"
    version      uint32    FORMAT_VERSION
    header_len   uint64
    header       header_len bytes of UTF-8 JSON:
                 {"kind": str, "kind_version": int, "meta": {...},
                  "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    payload      the arrays' raw bytes, C order, at the offsets the header gives
    checksum     32 bytes: SHA-256 of everything above

Only plain numeric and boolean dtypes are allowed, so loading never runs code. Every check
(magic, version, checksum, kind, array bounds) happens before anything is returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CorruptIndexFile

MAGIC = b"LLMDSPK\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_CHECKSUM_BYTES = 32
_ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]
)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What :func:`loads` returns: the producer's kind and version, its metadata and arrays."""

    kind: str
    kind_version: int
    meta: dict
    arrays: dict


def dumps(kind: str, kind_version: int, arrays: dict, meta: dict | None = None) -> bytes:
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
    return body + hashlib.sha256(body).digest()


def loads(data: bytes, expected_kind: str) -> Bundle:
    """Parse bytes written by :func:`dumps`, checking magic, version, checksum and kind.

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
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise CorruptIndexFile("SHA-256 checksum mismatch: the file was truncated or modified")
    header_end = _PREFIX.size + header_len
    if header_end > len(body):
        raise CorruptIndexFile(f"header length {header_len} runs past the end of the file")
    try:
        header = json.loads(body[_PREFIX.size:header_end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptIndexFile(f"header is not valid UTF-8 JSON: {exc}") from None
    if header.get("kind") != expected_kind:
        raise CorruptIndexFile(f"file holds a {header.get('kind')!r}; expected a {expected_kind!r}")
    payload = body[header_end:]
    arrays = {}
    for entry in header["arrays"]:
        if entry["dtype"] not in _ALLOWED_DTYPES:
            raise CorruptIndexFile(f"array {entry['name']!r} has disallowed dtype {entry['dtype']!r}")
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(s) for s in entry["shape"])
        start, nbytes = int(entry["offset"]), int(entry["nbytes"])
        if start < 0 or start + nbytes > len(payload) or nbytes != int(np.prod(shape)) * dtype.itemsize:
            raise CorruptIndexFile(f"array {entry['name']!r} does not fit its declared shape or the file")
        arrays[entry["name"]] = np.frombuffer(payload, dtype=dtype, count=nbytes // dtype.itemsize,
                                              offset=start).reshape(shape).copy()
    return Bundle(header["kind"], int(header["kind_version"]), header["meta"], arrays)


def save(path: str | os.PathLike, kind: str, kind_version: int, arrays: dict, meta: dict | None = None) -> None:
    """Write :func:`dumps` output to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    data = dumps(kind, kind_version, arrays, meta)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load(path: str | os.PathLike, expected_kind: str) -> Bundle:
    """Read a file written by :func:`save`; see :func:`loads`."""
    return loads(Path(path).read_bytes(), expected_kind)
