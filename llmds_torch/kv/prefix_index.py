"""Prefix index: chained SHA-256 keys of full pages, mapped to the pages holding their KV.

Page i of a sequence has key ``h_i = SHA-256(h_{i-1} || salt || extra_key || token ids as
little-endian int32)`` with ``h_{-1}`` empty. ``salt`` joins the per-cache random salt and the
optional per-request salt (each length-prefixed, so different splits never collide), which makes
keys unpredictable across processes and isolates tenants. On a key hit the stored token ids are
compared too (unless disabled), so a hash collision can never hand out wrong KV.
"""

import hashlib
import os
import struct
from collections.abc import Callable

import numpy as np

HashFn = Callable[[bytes], bytes]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def as_bytes(value, what: str) -> bytes:
    """``bytes``/``str`` (UTF-8) to bytes; ``None`` to empty."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


def chain_prefix(cache_salt: bytes, request_salt: bytes, extra_key: bytes) -> bytes:
    """The bytes hashed between ``h_{i-1}`` and the token ids of every page of one request."""
    parts = (cache_salt, request_salt, extra_key)
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def page_keys(token_bytes: bytes, page_size: int, num_pages: int, salt_block: bytes,
              previous: bytes = b"", hash_fn: HashFn | None = None) -> list[bytes]:
    """Chained keys of ``num_pages`` full pages.

    Parameters
    ----------
    token_bytes : bytes
        The token ids as little-endian int32, at least ``num_pages * page_size`` of them.
    previous : bytes
        The key of the page before the first one (empty for page 0).
    hash_fn : callable(bytes) -> bytes, optional
        Replaces SHA-256 (tests force collisions with it).
    """
    step = 4 * page_size
    keys = []
    if hash_fn is None or hash_fn is sha256:
        new = hashlib.sha256
        for i in range(num_pages):
            previous = new(previous + salt_block + token_bytes[i * step:(i + 1) * step]).digest()
            keys.append(previous)
        return keys
    for i in range(num_pages):
        previous = hash_fn(previous + salt_block + token_bytes[i * step:(i + 1) * step])
        keys.append(previous)
    return keys


def new_cache_salt() -> bytes:
    return os.urandom(16)


class PrefixIndex:
    """Maps page keys to page ids, and remembers each published page's key and token ids.

    ``child_of`` maps (previous page's key, salt block, token bytes) to the page published under the
    key those bytes hash to, so matching a cached prefix walks dictionaries instead of hashing: only
    pages that miss are hashed. It is exact (whole token bytes compared), and the key lookup behind
    it still sees any page published under a colliding key.
    """

    def __init__(self) -> None:
        self.page_of: dict[bytes, int] = {}
        self.key_of: dict[int, bytes] = {}
        self.tokens_of: dict[int, bytes] = {}  # page -> its token ids as int32 bytes
        self.child_of: dict[tuple[bytes, bytes, bytes], int] = {}
        self._child_key: dict[int, tuple[bytes, bytes, bytes]] = {}
        self.version = 0  # changes whenever an entry is added, dropped or renumbered
        self.removals = 0  # changes whenever an entry is dropped or renumbered (entries never change otherwise)

    def __len__(self) -> int:
        return len(self.page_of)

    def lookup(self, key: bytes, token_bytes: bytes, verify: bool) -> tuple[int | None, bool]:
        """The page published under ``key``, or None. The second value is True when the key hit
        but the stored token ids differ (a collision that was caught)."""
        page = self.page_of.get(key)
        if page is None:
            return None, False
        if verify and self.tokens_of[page] != token_bytes:
            return None, True
        return page, False

    def publish(self, key: bytes, page: int, token_bytes: bytes, previous: bytes = b"", salt_block: bytes = b"") -> bool:
        """Index ``page`` under ``key`` (the hash of ``previous``, ``salt_block`` and
        ``token_bytes``). If the key is already published, the first page stays the shared copy
        and this returns False."""
        if key in self.page_of:
            return False
        self.version += 1
        self.page_of[key] = page
        self.key_of[page] = key
        self.tokens_of[page] = token_bytes
        child = (previous, salt_block, token_bytes)
        if child not in self.child_of:
            self.child_of[child] = page
            self._child_key[page] = child
        return True

    def publish_many(self, keys: list[bytes], pages: list[int], chunks: list[bytes], parents: list[bytes],
                     salt_blocks: list[bytes]) -> list[int]:
        """``publish`` of many pages in order: ``pages[j]`` under ``keys[j]``, the hash of
        ``parents[j]``, ``salt_blocks[j]`` and ``chunks[j]``. Returns the pages indexed (those whose
        key was not published yet, nor earlier in the list)."""
        page_of = self.page_of
        if not page_of.keys().isdisjoint(keys) or len(set(keys)) < len(keys):
            return [p for k, p, c, prev, salt in zip(keys, pages, chunks, parents, salt_blocks)
                    if self.publish(k, p, c, prev, salt)]
        # No key is published yet, so no (parent, salt, tokens) entry exists either (its key would).
        children = list(zip(parents, salt_blocks, chunks))
        self.version += 1
        page_of.update(zip(keys, pages))
        self.key_of.update(zip(pages, keys))
        self.tokens_of.update(zip(pages, chunks))
        self.child_of.update(zip(children, pages))
        self._child_key.update(zip(pages, children))
        return pages

    def forget(self, page: int) -> None:
        key = self.key_of.pop(page, None)
        if key is not None:
            self.version += 1
            self.removals += 1
            del self.page_of[key]
            del self.tokens_of[page]
            child = self._child_key.pop(page, None)
            if child is not None:
                del self.child_of[child]

    def renumber(self, old_to_new: np.ndarray) -> None:
        """Follow a compaction: ``old_to_new[page]`` is each page's new id."""
        self.version += 1
        self.removals += 1
        self.key_of = {int(old_to_new[p]): k for p, k in self.key_of.items()}
        self.tokens_of = {int(old_to_new[p]): t for p, t in self.tokens_of.items()}
        self.page_of = {k: p for p, k in self.key_of.items()}
        self._child_key = {int(old_to_new[p]): c for p, c in self._child_key.items()}
        self.child_of = {c: p for p, c in self._child_key.items()}
