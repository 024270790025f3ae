"""Prefix matching: which published pages hold a prompt's longest cached prefix, each page's key
hashed once, and which full pages are reserved under a key but not yet published.

Cached pages are found through the index's exact token-bytes entries and give their stored keys, so
only the pages after the cached prefix are hashed; the key lookup behind them still catches (or,
unverified, takes) a page published under a colliding key.
"""

from llmds_torch.kv.prefix_index import HashFn, PrefixIndex, as_bytes, chain_prefix, page_keys
from llmds_torch.kv.sequence import Sequence, le_bytes


class PrefixMatcher:
    """The prefix index plus the keys of reserved, unpublished pages.

    Parameters
    ----------
    page_size : int
    cache_salt : bytes
        Per-cache salt of every key.
    hash_fn : callable(bytes) -> bytes
    verify_tokens : bool
        Compare stored token ids on a key hit.
    """

    def __init__(self, page_size: int, cache_salt: bytes, hash_fn: HashFn, verify_tokens: bool):
        self.page_size = page_size
        self.cache_salt = cache_salt
        self.hash_fn = hash_fn
        self.verify_tokens = verify_tokens
        self.index = PrefixIndex()
        self._plain_salt_block = chain_prefix(cache_salt, b"", b"")  # no request salt, no extra key
        self.pending_keys: dict[bytes, int] = {}  # key -> full pages reserved under it, not yet published
        self._keys_memo: tuple[bytes, bytes, list[bytes]] | None = None  # (token bytes, salt block, keys)
        self._match_memo = None  # (token bytes, salt block, index version, result of match)
        self._run = None  # (salt block, token bytes, pages, keys, index removals) of the last cached run walked

    def _known_run(self, token_bytes: bytes, salt_block: bytes, usable: int) -> tuple[list[int], list[bytes]]:
        """The pages and keys of the last cached run walked, when these tokens start with it and no
        index entry was dropped since: the walk would find the same pages (publishing only adds
        entries), so a shared system prompt is matched with one byte comparison."""
        run = self._run
        if run is None or run[4] != self.index.removals or run[0] != salt_block or len(run[2]) > usable \
                or not token_bytes.startswith(run[1]):
            return [], []
        return run[2][:], run[3][:]

    def salt_block(self, salt, extra_key) -> bytes:
        if salt is None and extra_key is None:
            return self._plain_salt_block
        return chain_prefix(self.cache_salt, as_bytes(salt, "salt"), as_bytes(extra_key, "extra_key"))

    def match(self, token_bytes: bytes, salt_block: bytes) -> tuple[list[int], list[bytes], int]:
        """Published pages that hold the longest cached prefix of the tokens in ``token_bytes``
        (little-endian int32; at most all tokens but the last, whole pages). Returns (pages, the
        keys of every full page of the tokens, collisions caught). The last answer and the last
        prompt's keys are remembered, so ``can_attach`` then ``attach`` match and hash once."""
        page_size, index = self.page_size, self.index
        memo = self._match_memo
        if memo is not None and memo[2] == index.version and memo[1] == salt_block and memo[0] == token_bytes:
            pages, keys, collisions = memo[3]
            return list(pages), list(keys), collisions
        num_tokens = len(token_bytes) // 4
        step, usable = 4 * page_size, (num_tokens - 1) // page_size
        pages, keys = self._known_run(token_bytes, salt_block, usable)
        previous = keys[-1] if keys else b""
        if index.child_of:
            child_of, key_of, known = index.child_of, index.key_of, len(pages)
            for i in range(known, usable):
                page = child_of.get((previous, salt_block, token_bytes[i * step:(i + 1) * step]))
                if page is None:
                    break
                pages.append(page)
                previous = key_of[page]
                keys.append(previous)
            if len(pages) > known:
                self._run = (salt_block, token_bytes[:len(pages) * step], pages[:], keys[:], index.removals)
        memo = self._keys_memo
        if memo is not None and memo[1] == salt_block and memo[0] == token_bytes:
            keys.extend(memo[2][len(keys):])
        else:
            done = len(keys)
            keys.extend(page_keys(token_bytes[done * step:], page_size, num_tokens // page_size - done,
                                  salt_block, previous, self.hash_fn))
            self._keys_memo = (token_bytes, salt_block, keys[:])
        collisions = 0
        if index.page_of:  # a key published with other tokens: a caught collision, or a hit unverified
            for i in range(len(pages), usable):
                page, collided = index.lookup(keys[i], token_bytes[i * step:(i + 1) * step], self.verify_tokens)
                collisions += collided
                if page is None:
                    break
                pages.append(page)
        self._match_memo = (token_bytes, salt_block, index.version, (list(pages), list(keys), collisions))
        return pages, keys, collisions

    def pending_tokens(self, token_bytes: bytes, salt_block: bytes) -> int:
        """Tokens after the cached prefix on full pages reserved under the same keys but not yet
        published (a multiple of ``page_size``)."""
        hits, keys, _ = self.match(token_bytes, salt_block)
        usable = (len(token_bytes) // 4 - 1) // self.page_size
        end = len(hits)
        while end < usable and keys[end] in self.pending_keys:
            end += 1
        return (end - len(hits)) * self.page_size

    def add_pending(self, keys: list[bytes]) -> None:
        pending = self.pending_keys
        for key in keys:
            pending[key] = pending.get(key, 0) + 1

    def drop_pending(self, keys: list[bytes]) -> None:
        pending = self.pending_keys
        for key in keys:
            left = pending[key] - 1
            if left:
                pending[key] = left
            else:
                del pending[key]

    def rebuild_pending(self, seqs) -> None:
        """Recount the pending keys from the sequences (after a rollback)."""
        self.pending_keys = {}
        for seq in seqs:
            self.add_pending(seq.keys[seq.num_published:])

    def extend_keys(self, seqs: list[Sequence]) -> None:
        """Hash the pages of each sequence that became full since its last key; they are pending."""
        page_size, pending = self.page_size, self.pending_keys
        for seq in seqs:
            known = len(seq.keys)
            full = len(seq.tokens) // page_size
            if full <= known:
                continue
            keys = page_keys(le_bytes(seq.tokens[known * page_size:full * page_size]), page_size, full - known,
                             seq.salt_block, seq.keys[-1] if known else b"", self.hash_fn)
            seq.keys.extend(keys)
            for key in keys:
                pending[key] = pending.get(key, 0) + 1
