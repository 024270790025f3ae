"""The block manager: torch-free bookkeeping of a paged KV cache.

It owns the allocator (page states, refcounts, free list, eviction), the prefix index, every
sequence's page list, and which slots have been written. It knows nothing of tensors: data movement
it needs (copy-on-write copies, compaction moves) is handed to the caller as page-id pairs, and
``PagedKVCache`` runs them as kernels. A simulator can drive it alone, declaring KV computed with
``mark_written``.

Terms: a *slot* is one token position in one page, ``slot = page * page_size + offset``. A slot is
*written* once every layer has written it. A full page is *published* (indexed for prefix sharing)
once all its slots are written.
"""

from collections.abc import Callable, Iterator, Sequence as SequenceOf
from contextlib import contextmanager

import numpy as np

from llmds_torch.errors import ContextWindowExceeded, OutOfPages, UnknownSequence
from llmds_torch.kv.allocator import CACHED, FREE, USED, PageAllocator
from llmds_torch.kv.defrag import plan_moves
from llmds_torch.kv.eviction import make_policy
from llmds_torch.kv.prefix_index import (HashFn, PrefixIndex, as_bytes, chain_prefix, new_cache_salt,
                                         page_keys, sha256)
from llmds_torch.kv.sequence import Sequence, validate_token_ids
from llmds_torch.kv.transaction import Snapshot, TransactionError

NOT_OWNED = -1


def _bit(layer: int) -> np.uint64:
    return np.uint64(1) << np.uint64(layer % 64)


class InvariantViolation(AssertionError):
    """``check_invariants`` found inconsistent bookkeeping (a bug, never bad input)."""


class BlockManager:
    """Pages, sequences and the prefix index of one cache.

    Parameters
    ----------
    num_pages : int
        Pages at start.
    page_size : int
        Tokens per page.
    num_layers : int
        Writes per slot before the slot counts as written.
    salt : bytes | str | None
        Per-cache salt of the prefix keys; ``None`` draws 16 random bytes.
    verify_tokens : bool
        Compare stored token ids on every prefix-key hit.
    max_context_len : int | None
        Longest sequence allowed.
    max_num_pages : int | None
        The pool may grow up to this many pages when the free list runs dry (before evicting).
    eviction_policy : str | EvictionPolicy
        ``"lru"`` (default), ``"fifo"``, or an object with the ``EvictionPolicy`` methods.
    hash_fn : callable(bytes) -> bytes
        The page hash; SHA-256 unless a test forces collisions.
    on_resize : callable(new_num_pages) -> None
        Called before the page count grows, so the owner can resize its storage.
    """

    def __init__(self, num_pages: int, page_size: int, *, num_layers: int = 1, salt=None,
                 verify_tokens: bool = True, max_context_len: int | None = None,
                 max_num_pages: int | None = None, eviction_policy="lru", hash_fn: HashFn | None = None,
                 on_resize: Callable[[int], None] | None = None):
        if num_pages < 1 or page_size < 1 or num_layers < 1:
            raise ValueError("num_pages, page_size and num_layers must be positive")
        self.page_size = page_size
        self.num_layers = num_layers
        self.verify_tokens = verify_tokens
        self.max_context_len = max_context_len
        self.max_num_pages = max(max_num_pages or num_pages, num_pages)
        self.hash_fn = hash_fn or sha256
        self.on_resize = on_resize
        self.cache_salt = new_cache_salt() if salt is None else as_bytes(salt, "salt")
        self.index = PrefixIndex()
        self.allocator = PageAllocator(num_pages, make_policy(eviction_policy), self._evicted)
        self.pending_keys: dict[bytes, int] = {}  # key -> full pages reserved under it, not yet published
        self._keys_memo: tuple[bytes, bytes, list[bytes]] | None = None  # (token bytes, salt block, keys)
        self._txn: Snapshot | None = None
        self.seqs: dict[int, Sequence] = {}
        self._next_seq_id = 0
        # Which layers wrote each slot: a bit per layer, in 64-bit words (8 bytes a slot up to 64 layers).
        words = -(-num_layers // 64)
        bits = [min(64, num_layers - 64 * w) for w in range(words)]
        self.all_layers = np.array([(1 << b) - 1 for b in bits], dtype=np.uint64)  # [words]
        self.slot_layers = np.zeros((num_pages * page_size, words), dtype=np.uint64)  # [num_slots, words]
        self.page_owner = np.full(num_pages, NOT_OWNED, dtype=np.int64)  # [num_pages]
        self.page_fill = np.zeros(num_pages, dtype=np.int64)  # [num_pages]: reserved slots of owned pages
        self.pending_copies: list[tuple[int, int]] = []
        self.counters = dict(prefix_query_tokens=0, prefix_hit_tokens=0, cow_copies=0, refusals=0,
                             hash_collisions=0, pages_moved=0, compactions=0, grows=0, shrinks=0)

    # ------------------------------------------------------------------ properties
    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self.seqs

    def _seq(self, seq_id) -> Sequence:
        seq = self.seqs.get(seq_id) if isinstance(seq_id, (int, np.integer)) else None
        if seq is None:
            raise UnknownSequence(f"sequence {seq_id!r} is not attached (never attached, or already detached)")
        return seq

    def num_tokens(self, seq_id: int) -> int:
        return self._seq(seq_id).num_tokens

    def num_written(self, seq_id: int) -> int:
        return self._seq(seq_id).num_written

    def num_cached_tokens(self, seq_id: int) -> int:
        return self._seq(seq_id).num_cached

    def token_ids(self, seq_id: int) -> list[int]:
        return list(self._seq(seq_id).tokens)

    def pending_token_ids(self, seq_id: int) -> list[int]:
        """The reserved tokens whose KV is not written yet (``tokens[num_written:]``)."""
        seq = self._seq(seq_id)
        return seq.tokens[seq.num_written:]

    def pages(self, seq_id: int) -> list[int]:
        return list(self._seq(seq_id).pages)

    # ------------------------------------------------------------------ capacity
    def _pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def _obtainable(self) -> int:
        return self.allocator.available() + (self.max_num_pages - self.num_pages)

    def _refuse(self, message: str):
        self.counters["refusals"] += 1
        raise OutOfPages(message)

    def _make_room(self, n: int) -> None:
        """Grow the pool (at least doubling, up to ``max_num_pages``) when fewer than ``n`` pages are
        free. Growth is the one step that may raise (the storage allocation), so callers make room
        before they change anything."""
        shortfall = n - self.allocator.num_free
        if shortfall > 0 and self.num_pages < self.max_num_pages:
            self.grow(min(self.max_num_pages, max(self.num_pages + shortfall, 2 * self.num_pages)))

    def _allocate(self, n: int) -> list[int]:
        """Pages from the free list, then from growth, then by eviction; slot state reset."""
        self._make_room(n)
        pages = self.allocator.allocate(n)
        if pages:
            rows = np.asarray(pages)
            self._page_slot_layers()[rows] = 0
        return pages

    def grow(self, new_num_pages: int) -> None:
        """Add free pages up to ``new_num_pages`` (storage first, through ``on_resize``)."""
        if new_num_pages <= self.num_pages:
            return
        if self.on_resize is not None:
            self.on_resize(new_num_pages)
        extra = new_num_pages - self.num_pages
        self.allocator.grow(new_num_pages)
        fresh = np.zeros((extra * self.page_size, self.slot_layers.shape[1]), dtype=np.uint64)
        self.slot_layers = np.concatenate([self.slot_layers, fresh])
        self.page_owner = np.concatenate([self.page_owner, np.full(extra, NOT_OWNED, np.int64)])
        self.page_fill = np.concatenate([self.page_fill, np.zeros(extra, np.int64)])
        self.max_num_pages = max(self.max_num_pages, new_num_pages)
        self.counters["grows"] += 1

    # ------------------------------------------------------------------ prefix lookup
    def _salt_block(self, salt, extra_key) -> bytes:
        return chain_prefix(self.cache_salt, as_bytes(salt, "salt"), as_bytes(extra_key, "extra_key"))

    def _prompt_keys(self, tokens: list[int], salt_block: bytes) -> tuple[bytes, list[bytes]]:
        """``tokens`` as little-endian int32 bytes, and the keys of all its full pages. The last
        answer is remembered, so ``can_attach`` then ``attach`` of one prompt hashes it once."""
        token_bytes = np.asarray(tokens, dtype="<i4").tobytes()
        memo = self._keys_memo
        if memo is not None and memo[1] == salt_block and memo[0] == token_bytes:
            return token_bytes, memo[2]
        keys = page_keys(token_bytes, self.page_size, len(tokens) // self.page_size, salt_block, b"", self.hash_fn)
        self._keys_memo = (token_bytes, salt_block, keys)
        return token_bytes, keys

    def _match_prefix(self, tokens: list[int], salt_block: bytes) -> tuple[list[int], list[bytes], int]:
        """Published pages that hold the longest cached prefix of ``tokens`` (at most
        ``len(tokens) - 1`` tokens, whole pages). Returns (pages, the keys of every full page of
        ``tokens``, collisions caught)."""
        token_bytes, keys = self._prompt_keys(tokens, salt_block)
        usable = (len(tokens) - 1) // self.page_size
        pages, collisions, step = [], 0, 4 * self.page_size
        if not self.index.page_of:
            return pages, keys, 0
        for i in range(usable):
            page, collided = self.index.lookup(keys[i], token_bytes[i * step:(i + 1) * step], self.verify_tokens)
            collisions += collided
            if page is None:
                break
            pages.append(page)
        return pages, keys, collisions

    def pending_prefix_tokens(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Leading tokens of this prompt, after its published (cached) prefix, that lie on full
        pages some live sequence has reserved with exactly these tokens but not yet published: a
        multiple of ``page_size``. Holding the prompt back until they are published turns them into
        prefix hits."""
        tokens = validate_token_ids(token_ids)
        hits, keys, _ = self._match_prefix(tokens, self._salt_block(salt, extra_key))
        usable = (len(tokens) - 1) // self.page_size
        end = len(hits)
        while end < usable and keys[end] in self.pending_keys:
            end += 1
        return (end - len(hits)) * self.page_size

    def _add_pending(self, keys: list[bytes]) -> None:
        pending = self.pending_keys
        for key in keys:
            pending[key] = pending.get(key, 0) + 1

    def _drop_pending(self, keys: list[bytes]) -> None:
        pending = self.pending_keys
        for key in keys:
            left = pending[key] - 1
            if left:
                pending[key] = left
            else:
                del pending[key]

    def _rebuild_pending_keys(self) -> None:
        self.pending_keys = {}
        for seq in self.seqs.values():
            self._add_pending(seq.keys[seq.num_published:])

    def _extend_keys(self, seq: Sequence) -> None:
        """Hash the pages of ``seq`` that became full since its last key."""
        full, known, page_size = len(seq.tokens) // self.page_size, len(seq.keys), self.page_size
        if full <= known:
            return
        token_bytes = np.asarray(seq.tokens[known * page_size:full * page_size], dtype="<i4").tobytes()
        keys = page_keys(token_bytes, page_size, full - known, seq.salt_block,
                         seq.keys[-1] if seq.keys else b"", self.hash_fn)
        seq.keys.extend(keys)
        self._add_pending(keys)

    def _evicted(self, page: int) -> None:
        self.index.forget(page)
        if self._txn is not None:
            self._txn.evicted.append(page)

    # ------------------------------------------------------------------ transactions
    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every ``attach``, ``append``, ``append_batch``, ``fork``, write and ``detach`` (of a
        sequence created inside) of the block if it raises: sequences, pages, refcounts, block
        tables, the prefix index and every counter but ``refusals`` return to their state at entry.
        Cached pages evicted inside stay evicted. Raises ``TransactionError`` when nested."""
        if self._txn is not None:
            raise TransactionError("a transaction is already open; transactions do not nest")
        self._txn = Snapshot.take(self)
        try:
            yield
        except BaseException:
            snapshot, self._txn = self._txn, None
            snapshot.restore(self)
            raise
        finally:
            self._txn = None

    def _forbid_in_transaction(self, what: str) -> None:
        if self._txn is not None:
            raise TransactionError(f"{what} cannot run inside a transaction")

    def _attach_need(self, tokens: list[int], salt_block: bytes) -> tuple[list[int], list[bytes], int, int]:
        hit_pages, keys, collisions = self._match_prefix(tokens, salt_block)
        new_pages = self._pages_for(len(tokens)) - len(hit_pages)
        # Hit pages that sit in the evictable set stop being evictable once we take them.
        taken_from_cached = sum(1 for p in hit_pages if self.allocator.state[p] == CACHED and p in self.allocator.policy)
        return hit_pages, keys, new_pages + taken_from_cached, collisions

    def _check_context(self, num_tokens: int, what: str) -> None:
        if self.max_context_len is not None and num_tokens > self.max_context_len:
            raise ContextWindowExceeded(f"{what} would hold {num_tokens} tokens; the context window is "
                                        f"{self.max_context_len}")

    # ------------------------------------------------------------------ sequence operations
    def can_attach(self, token_ids, *, salt=None, extra_key=None) -> bool:
        """Whether ``attach`` would succeed now. Given an int, assumes no prefix hit."""
        if isinstance(token_ids, (int, np.integer)):
            needed = self._pages_for(int(token_ids))
            fits_context = self.max_context_len is None or token_ids <= self.max_context_len
            return fits_context and needed <= self._obtainable()
        tokens = validate_token_ids(token_ids)
        if self.max_context_len is not None and len(tokens) > self.max_context_len:
            return False
        return self._attach_need(tokens, self._salt_block(salt, extra_key))[2] <= self._obtainable()

    def attach(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Start a sequence with prompt ``token_ids``; reuse cached full pages of its prefix,
        allocate the rest. Returns the new sequence id."""
        tokens = validate_token_ids(token_ids)
        self._check_context(len(tokens), "the prompt")
        salt_block = self._salt_block(salt, extra_key)
        hit_pages, keys, needed, collisions = self._attach_need(tokens, salt_block)
        if needed > self._obtainable():
            self._refuse(f"attach needs {needed} pages; {self.allocator.num_free} free, "
                         f"{self.allocator.num_evictable} evictable, {self.max_num_pages - self.num_pages} "
                         f"more may be grown")
        num_new = self._pages_for(len(tokens)) - len(hit_pages)
        self._make_room(num_new)  # may raise: before anything is taken
        for page in hit_pages:  # take them before allocation can evict them
            self.allocator.incref(page)
        new_pages = self._allocate(num_new)
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        num_cached = len(hit_pages) * self.page_size
        seq = Sequence(seq_id, tokens, hit_pages + new_pages, salt_block, num_written=num_cached,
                       num_cached=num_cached, keys=list(keys), num_published=len(hit_pages))
        self.seqs[seq_id] = seq
        self._add_pending(seq.keys[seq.num_published:])
        self._reserve(seq, num_cached, len(tokens))
        self.counters["prefix_query_tokens"] += len(tokens)
        self.counters["prefix_hit_tokens"] += num_cached
        self.counters["hash_collisions"] += collisions
        return seq_id

    def available_pages(self) -> int:
        """Pages an allocation could obtain now: free, evictable, and growth up to ``max_num_pages``."""
        return self._obtainable()

    def pages_to_append(self, seq_ids, num_tokens: int = 1) -> int:
        """Pages (new ones and copy-on-write copies) appending ``num_tokens`` to each of
        ``seq_ids`` (an id or a list) would take."""
        ids = [seq_ids] if isinstance(seq_ids, (int, np.integer)) else seq_ids
        page_size, refcount = self.page_size, self.allocator.refcount
        needed = 0
        for seq_id in ids:
            seq = self._seq(seq_id)
            old_len = len(seq.tokens)
            needed += -(-(old_len + num_tokens) // page_size) - len(seq.pages)
            if old_len % page_size and refcount[seq.pages[-1]] > 1:
                needed += 1
        return needed

    def can_append(self, seq_ids, num_tokens: int = 1) -> bool:
        """Whether appending ``num_tokens`` to each of ``seq_ids`` (an id or a list) fits now."""
        ids = [seq_ids] if isinstance(seq_ids, (int, np.integer)) else seq_ids
        if self.max_context_len is not None:
            for seq_id in ids:
                if len(self._seq(seq_id).tokens) + num_tokens > self.max_context_len:
                    return False
        return self.pages_to_append(ids, num_tokens) <= self._obtainable()

    def append(self, seq_id: int, token_ids) -> None:
        """Reserve slots for ``token_ids`` after the sequence's tokens (copy-on-write first when
        the page to write is shared)."""
        self.append_batch([seq_id], [token_ids])

    def append_batch(self, seq_ids: SequenceOf[int], token_ids) -> None:
        """Append to many sequences at once: ``token_ids[i]`` (an int, or a list of ints) goes to
        ``seq_ids[i]``. All or nothing: on any error no sequence changes."""
        if len(seq_ids) != len(token_ids):
            raise ValueError(f"{len(seq_ids)} sequence ids but {len(token_ids)} token lists")
        seqs = [self._seq(s) for s in seq_ids]
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("append_batch got the same sequence id twice")
        if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in token_ids):
            lists = [[t] for t in validate_token_ids(token_ids)]  # a decode step: one check for all
        else:
            lists = [validate_token_ids([t] if isinstance(t, (int, np.integer)) and not isinstance(t, bool) else t)
                     for t in token_ids]
        page_size, refcount, max_len = self.page_size, self.allocator.refcount, self.max_context_len
        cows, extras, needed = [], [], 0
        for seq, toks in zip(seqs, lists):
            old_len = len(seq.tokens)
            new_len = old_len + len(toks)
            if max_len is not None and new_len > max_len:
                self._check_context(new_len, f"sequence {seq.seq_id}")
            cow = old_len % page_size != 0 and refcount[seq.pages[-1]] > 1
            extra = -(-new_len // page_size) - len(seq.pages)
            cows.append(cow)
            extras.append(extra)
            needed += extra + cow
        if needed > self._obtainable():
            self._refuse(f"append needs {needed} pages; {self.allocator.num_free} free, "
                         f"{self.allocator.num_evictable} evictable")
        self.pending_copies = []
        fresh = self._allocate(needed) if needed else []
        if self._txn is not None:
            for seq in seqs:
                self._txn.touch(seq)
        i, unused, owned_pages, owners, fills = 0, [], [], [], []
        for seq, toks, cow, extra in zip(seqs, lists, cows, extras):
            if cow:
                # A parent and its fork in one batch: after the first copies the shared page, the
                # last holder writes it in place, and the page reserved for its copy goes back.
                if refcount[seq.pages[-1]] > 1:
                    self._copy_on_write(seq, fresh[i])
                else:
                    unused.append(fresh[i])
                i += 1
            if extra:
                seq.pages.extend(fresh[i:i + extra])
                i += extra
            start = len(seq.tokens)
            seq.tokens.extend(toks)
            if (start + len(toks)) // page_size > len(seq.keys):
                self._extend_keys(seq)
            if len(toks) == 1:  # a decode step: collect, assign once below
                owned_pages.append(seq.pages[-1])
                owners.append(seq.seq_id)
                fills.append(start % page_size + 1)
            else:
                self._reserve(seq, start, start + len(toks))
        if owned_pages:
            self.page_owner[owned_pages] = owners
            self.page_fill[owned_pages] = fills
        self.allocator.release(unused)

    def _reserve(self, seq: Sequence, start: int, end: int) -> None:
        """Mark the pages holding positions ``[start, end)`` as owned by ``seq`` for writing."""
        if end <= start:
            return
        page_size = self.page_size
        for i in range(start // page_size, (end - 1) // page_size + 1):
            page = seq.pages[i]
            self.page_owner[page] = seq.seq_id
            self.page_fill[page] = min(page_size, seq.num_tokens - i * page_size)

    def _copy_on_write(self, seq: Sequence, new: int) -> None:
        """Give ``seq`` the fresh page ``new`` in place of its shared last page."""
        old = seq.pages[-1]
        rows = self._page_slot_layers()
        rows[new] = rows[old]
        seq.pages[-1] = new
        self.allocator.release([old])
        self.pending_copies.append((old, new))
        self.counters["cow_copies"] += 1

    def take_pending_copies(self) -> list[tuple[int, int]]:
        """Copy-on-write copies (src, dst) decided since the last call; the caller must copy the
        page contents before anything writes the destination pages."""
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def fork(self, seq_id: int) -> int:
        """A new sequence sharing every page of ``seq_id`` (refcount + 1 each)."""
        seq = self._seq(seq_id)
        if seq.num_written != seq.num_tokens:
            raise ValueError(f"sequence {seq_id} has {seq.num_tokens - seq.num_written} reserved tokens "
                             "without KV; write them before forking")
        child_id = self._next_seq_id
        self._next_seq_id += 1
        for page in seq.pages:
            self.allocator.incref(page)
        child = Sequence(child_id, list(seq.tokens), list(seq.pages), seq.salt_block, seq.num_written,
                         seq.num_cached, list(seq.keys), seq.num_published)
        self.seqs[child_id] = child
        self._add_pending(child.keys[child.num_published:])
        return child_id

    def detach(self, seq_id: int) -> None:
        """Release the sequence's pages, tail first (so under LRU a prefix's tail is evicted
        before its head). Published pages become cached, the others free."""
        seq = self._seq(seq_id)
        if self._txn is not None and seq_id < self._txn.first_new_seq_id:
            raise TransactionError(f"sequence {seq_id} existed before the transaction; detach it outside")
        self._drop_pending(seq.keys[seq.num_published:])
        owned = self.page_owner[seq.pages] == seq_id
        self.page_owner[np.asarray(seq.pages)[owned]] = NOT_OWNED
        self.allocator.release(reversed(seq.pages))
        del self.seqs[seq_id]

    # ------------------------------------------------------------------ writes
    def slot_mapping(self, seq_ids: SequenceOf[int]) -> np.ndarray:
        """Slots of every reserved-but-unwritten token, in batch order then position order.

        Returns
        -------
        np.ndarray
            int64 ``[sum of pending tokens]``.
        """
        page_size, slots = self.page_size, []
        for seq in map(self._seq, seq_ids):
            start, end = seq.num_written, len(seq.tokens)
            if end - start == 1:  # a decode step: plain ints, one array at the end
                slots.append(seq.pages[start // page_size] * page_size + start % page_size)
            elif end > start:
                slots.extend(self._slots(seq, start, end).tolist())
        return np.array(slots, dtype=np.int64)

    def _slots(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        if end - start == 1:
            page = seq.pages[start // self.page_size]
            return np.array([page * self.page_size + start % self.page_size], dtype=np.int64)
        positions = np.arange(start, end, dtype=np.int64)
        pages = np.asarray(seq.pages, dtype=np.int64)
        return pages[positions // self.page_size] * self.page_size + positions % self.page_size

    def _page_slot_layers(self) -> np.ndarray:
        """``slot_layers`` viewed per page: ``[num_pages, page_size, words]``."""
        return self.slot_layers.reshape(-1, self.page_size, self.slot_layers.shape[1])

    def _fully_written(self, slots: np.ndarray) -> np.ndarray:
        """bool ``[len(slots)]``: every layer has written the slot."""
        return (self.slot_layers[slots] == self.all_layers).all(axis=1)

    def check_write(self, layer: int, slots: np.ndarray) -> None:
        """Raise ``ValueError`` unless ``layer`` is valid and every slot is pending and not yet
        written by that layer (nothing changes)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.num_layers})")
        if slots.size == 0:
            return
        if slots.min() < 0 or slots.max() >= self.num_pages * self.page_size:
            raise ValueError(f"slots must lie in [0, {self.num_pages * self.page_size})")
        if np.unique(slots).size != slots.size:
            raise ValueError("slot_mapping names a slot twice")
        pages = slots // self.page_size
        if (self.page_owner[pages] == NOT_OWNED).any() or (slots % self.page_size >= self.page_fill[pages]).any():
            raise ValueError("slot_mapping names a slot that is not reserved for writing "
                             "(already written, shared, or not allocated); use slot_mapping()")
        if (self.slot_layers[slots, layer // 64] & _bit(layer)).any():
            raise ValueError(f"layer {layer} already wrote some of these slots")

    def record_write(self, layer: int, slots: np.ndarray, *, checked: bool = False) -> None:
        """Count a write of ``slots`` by ``layer``; publish pages that become fully written.
        ``checked``: the caller already ran ``check_write`` on exactly these arguments."""
        if not checked:
            self.check_write(layer, slots)
        if self._txn is not None:
            self._txn.log_slots(self.slot_layers, slots)
        self.slot_layers[slots, layer // 64] |= _bit(layer)
        done = slots[self._fully_written(slots)]
        if not done.size:
            return
        owners, counts = np.unique(self.page_owner[done // self.page_size], return_counts=True)
        for seq_id, count in zip(owners.tolist(), counts.tolist()):
            seq = self.seqs[seq_id]
            if count == len(seq.tokens) - seq.num_written:
                self._complete(seq)  # every pending token of the sequence is written: no scan
            else:
                self._advance(seq)

    def mark_written(self, seq_id: int, num_tokens: int | None = None) -> None:
        """Declare the KV of the sequence's pending tokens (or the first ``num_tokens`` of them)
        computed in every layer, as a simulator does instead of writing tensors."""
        seq = self._seq(seq_id)
        end = seq.num_tokens if num_tokens is None else min(seq.num_tokens, seq.num_written + num_tokens)
        slots = self._slots(seq, seq.num_written, end)
        if self._txn is not None:
            self._txn.log_slots(self.slot_layers, slots)
        self.slot_layers[slots] = self.all_layers
        self._advance(seq)

    def _advance(self, seq: Sequence) -> None:
        """Move ``num_written`` past every fully written token and publish completed pages."""
        start = seq.num_written
        if start == seq.num_tokens:
            return
        slots = self._slots(seq, start, seq.num_tokens)
        not_done = np.flatnonzero(~self._fully_written(slots))
        end = start + (int(not_done[0]) if not_done.size else slots.size)
        if end == start:
            return
        if self._txn is not None:
            self._txn.touch(seq)
        seq.num_written = end
        page_size = self.page_size
        first, last = start // page_size, (end - 1) // page_size
        for i in range(first, last + 1):
            if min((i + 1) * page_size, seq.num_tokens) <= end and self.page_owner[seq.pages[i]] == seq.seq_id:
                self.page_owner[seq.pages[i]] = NOT_OWNED
        self._publish(seq)

    def _complete(self, seq: Sequence) -> None:
        """All reserved tokens of ``seq`` are written: release its pages from writing, publish."""
        if self._txn is not None:
            self._txn.touch(seq)
        page_size, owner = self.page_size, self.page_owner
        for i in range(seq.num_written // page_size, (len(seq.tokens) - 1) // page_size + 1):
            owner[seq.pages[i]] = NOT_OWNED
        seq.num_written = len(seq.tokens)
        if seq.num_published < seq.num_written // page_size:
            self._publish(seq)

    def _publish(self, seq: Sequence) -> None:
        """Index the full, fully written pages of ``seq`` under their (already computed) keys."""
        page_size = self.page_size
        start, full = seq.num_published, seq.num_written // page_size
        if start >= full:
            return
        token_bytes = np.asarray(seq.tokens[start * page_size:full * page_size], dtype="<i4").tobytes()
        step, txn = 4 * page_size, self._txn
        for j, key in enumerate(seq.keys[start:full]):
            page = seq.pages[start + j]
            if self.index.publish(key, page, token_bytes[j * step:(j + 1) * step]):
                self.allocator.published[page] = True
                if txn is not None:
                    txn.published_pages.append(page)
        self._drop_pending(seq.keys[start:full])
        seq.num_published = full

    # ------------------------------------------------------------------ pins
    def _published_chain(self, token_ids, salt, extra_key) -> list[int]:
        tokens = validate_token_ids(token_ids)
        full = len(tokens) // self.page_size
        pages, _, _ = self._match_prefix(tokens[:full * self.page_size] + [0], self._salt_block(salt, extra_key))
        return pages

    def pin_prefix(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Pin the published full pages of this prefix so they are never evicted. Returns the
        number of pages pinned (the prefix must have been written by some sequence first)."""
        pages = self._published_chain(token_ids, salt, extra_key)
        for page in pages:
            self.allocator.pin(page)
        return len(pages)

    def unpin_prefix(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Undo one ``pin_prefix`` of the same prefix; returns pages unpinned."""
        pages = [p for p in self._published_chain(token_ids, salt, extra_key) if self.allocator.pins[p] > 0]
        for page in pages:
            self.allocator.unpin(page)
        return len(pages)

    # ------------------------------------------------------------------ compaction
    def fragmentation(self) -> float:
        """Share of page ids below the highest non-free page that are free: the room a
        compaction followed by a shrink would give back (0 = perfectly compact)."""
        live = np.flatnonzero(self.allocator.state != FREE)
        if live.size == 0:
            return 0.0
        return 1.0 - live.size / (int(live[-1]) + 1)

    def compaction_order(self, order: str) -> list[int]:
        """Non-free pages in the order they should occupy ids 0, 1, 2, ... ."""
        state = self.allocator.state
        if order == "lowest":
            return np.flatnonzero(state != FREE).tolist()
        if order != "sequence":
            raise ValueError(f"order must be 'sequence' or 'lowest', got {order!r}")
        seen = np.zeros(self.num_pages, dtype=bool)
        result = []
        for seq_id in sorted(self.seqs):
            for page in self.seqs[seq_id].pages:
                if not seen[page]:
                    seen[page] = True
                    result.append(page)
        cached = [p for p in np.flatnonzero(state == CACHED).tolist() if not seen[p]]
        return result + cached

    def plan_compaction(self, order: str = "sequence") -> tuple[list[list[tuple[int, int]]], np.ndarray]:
        """Plan moves that pack the non-free pages into ids ``[0, live)``.

        Returns
        -------
        rounds : list of list of (src, dst)
            Each round's moves read only pages no move of the same round writes.
        old_to_new : np.ndarray
            int64 ``[num_pages]``, each non-free page's final id, -1 for free pages.
        """
        if order == "sequence" and not (self.allocator.state == FREE).any():
            order = "lowest"  # a full pool is already compact, and has no spare page to reorder through
        target_order = self.compaction_order(order)
        old_to_new = np.full(self.num_pages, -1, dtype=np.int64)
        old_to_new[target_order] = np.arange(len(target_order))
        if order == "lowest":
            # Keep pages already low where they are; move the high ones into the low holes.
            live = np.asarray(target_order, dtype=np.int64)
            n_live = live.size
            stay = live[live < n_live]
            movers = live[live >= n_live]
            holes = np.setdiff1d(np.arange(n_live), stay)
            old_to_new[:] = -1
            old_to_new[stay] = stay
            old_to_new[movers] = holes
        rounds = plan_moves(old_to_new, self.allocator.state != FREE)
        return rounds, old_to_new

    def apply_compaction(self, old_to_new: np.ndarray, new_num_pages: int | None = None) -> int:
        """Renumber every structure after the moves of ``plan_compaction`` were carried out, and
        optionally drop the (free) pages at ids ``>= new_num_pages``. Returns pages moved."""
        self._forbid_in_transaction("compaction")
        moved = int(np.count_nonzero((old_to_new >= 0) & (old_to_new != np.arange(self.num_pages))))
        n = self.num_pages if new_num_pages is None else new_num_pages
        for seq in self.seqs.values():
            seq.pages = old_to_new[seq.pages].tolist()
        live = np.flatnonzero(old_to_new >= 0)
        old = self._page_slot_layers()
        new = np.zeros((n,) + old.shape[1:], dtype=np.uint64)
        new[old_to_new[live]] = old[live]
        self.slot_layers = new.reshape(n * self.page_size, -1)
        for name, fill in (("page_owner", NOT_OWNED), ("page_fill", 0)):
            new = np.full(n, fill, dtype=np.int64)
            new[old_to_new[live]] = getattr(self, name)[live]
            setattr(self, name, new)
        self.index.renumber(old_to_new)
        self.allocator.renumber(old_to_new, n)
        self.counters["pages_moved"] += moved
        self.counters["compactions"] += 1
        return moved

    def shrink_target(self, target: int | None) -> int:
        """Check that the pool can shrink to ``target`` pages (default: the non-free pages) after
        evicting cached pages LRU first; evict what is needed; return the page count to keep."""
        self._forbid_in_transaction("shrinking")
        used = self.allocator.count(USED)
        cached = self.allocator.count(CACHED)
        if target is None:
            return max(1, used + cached)
        if target < max(1, used):
            self._refuse(f"cannot shrink to {target} pages: {used} pages are in use")
        evict = used + cached - target
        if evict > self.allocator.num_evictable:
            self._refuse(f"cannot shrink to {target} pages: {evict} cached pages would have to be evicted "
                         f"but only {self.allocator.num_evictable} are evictable (the rest are pinned)")
        if evict > 0:
            self.allocator.evict(evict)
        return target

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict:
        a = self.allocator
        counters = dict(self.counters)
        queried = counters["prefix_query_tokens"]
        return dict(
            num_pages=self.num_pages,
            page_size=self.page_size,
            pages_free=a.count(FREE),
            pages_used=a.count(USED),
            pages_cached=a.count(CACHED),
            pages_pinned=int(np.count_nonzero(a.pins)),
            pages_evictable=a.num_evictable,
            num_sequences=len(self.seqs),
            prefix_hit_rate=counters["prefix_hit_tokens"] / queried if queried else 0.0,
            evictions=a.evictions,
            fragmentation=self.fragmentation(),
            **counters,
        )

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` if the bookkeeping is inconsistent: every page in exactly
        one state, refcount = block-table references, the index naming only cached or used
        published pages, pending slots only in pages owned by one sequence."""
        a = self.allocator

        def fail(msg):
            raise InvariantViolation(msg)

        refs = np.zeros(self.num_pages, dtype=np.int64)
        for seq in self.seqs.values():
            np.add.at(refs, np.asarray(seq.pages, dtype=np.int64), 1)
            if len(seq.pages) != self._pages_for(seq.num_tokens):
                fail(f"sequence {seq.seq_id} has {len(seq.pages)} pages for {seq.num_tokens} tokens")
            if seq.num_written < seq.num_tokens:
                pending_pages = {seq.pages[i // self.page_size] for i in range(seq.num_written, seq.num_tokens)}
                for page in pending_pages:
                    if a.refcount[page] != 1 or self.page_owner[page] != seq.seq_id:
                        fail(f"page {page} with pending slots of sequence {seq.seq_id} is shared or unowned")
            if len(seq.keys) != seq.num_tokens // self.page_size or seq.num_published != seq.num_written // self.page_size:
                fail(f"sequence {seq.seq_id} has {len(seq.keys)} page keys, {seq.num_published} published, for "
                     f"{seq.num_tokens} tokens ({seq.num_written} written)")
        pending = self.pending_keys
        self._rebuild_pending_keys()
        if pending != self.pending_keys:
            fail("pending page keys differ from the sequences' unpublished full pages")
        if not np.array_equal(refs, a.refcount):
            bad = np.flatnonzero(refs != a.refcount)[:5]
            fail(f"refcount differs from block-table references at pages {bad.tolist()}")
        free = np.zeros(self.num_pages, dtype=np.int64)
        np.add.at(free, np.asarray(a.free_list, dtype=np.int64), 1)
        if (free > 1).any():
            fail("a page appears twice in the free list")
        if not np.array_equal(free == 1, a.state == FREE):
            fail("free list and FREE state disagree")
        if not np.array_equal(a.state == USED, refs > 0):
            fail("USED state and positive refcount disagree")
        cached = a.state == CACHED
        in_policy = np.zeros(self.num_pages, dtype=bool)
        in_policy[list(a.policy)] = True
        if not np.array_equal(in_policy, cached & (a.pins == 0)):
            fail("evictable set differs from unpinned cached pages")
        if not np.array_equal(cached & ~a.published, np.zeros_like(cached)):
            fail("a cached page is not published")
        for key, page in self.index.page_of.items():
            if a.state[page] == FREE or self.index.key_of.get(page) != key or not a.published[page]:
                fail(f"index entry for page {page} is stale")
        if int(np.count_nonzero(a.published)) != len(self.index):
            fail("published flags and index size disagree")
