"""The block manager: torch-free bookkeeping of a paged KV cache.

It owns the allocator (page states, refcounts, free list, eviction), the prefix index, every
sequence's page list, and which slots have been written. It knows nothing of tensors: data movement
it needs (copy-on-write copies, compaction moves) is handed to the caller as page-id pairs, and
``PagedKVCache`` runs them as kernels. A simulator can drive it alone, declaring KV computed with
``mark_written``.

Terms: a *slot* is one token position in one page, ``slot = page * page_size + offset``. A slot is
*written* once every layer has written it. A full page is *published* (indexed for prefix sharing)
once all its slots are written.

The parts it coordinates, each in its own module: ``allocator`` (page states, refcounts, free list,
pins, eviction; ``page_release`` its compiled release loop), ``prefix_match`` (cached-prefix lookup,
page keys, pending keys), ``block_tables`` (every sequence's pages, counts and slot runs as arrays),
``write_tracker`` (which layers wrote which slots), ``capacity`` (``pages_needed``, the cost of an
append), ``defrag`` (compaction planning), ``transaction`` (undo of a block of calls) and
``invariants`` (consistency checks).
"""

from array import array
from collections.abc import Callable, Iterator, Sequence as SequenceOf
from contextlib import contextmanager

import numpy as np

from llmds_torch.errors import ContextWindowExceeded, OutOfPages, UnknownSequence
from llmds_torch.kv.allocator import CACHED, FREE, USED, PageAllocator
from llmds_torch.kv.block_tables import BlockTables
from llmds_torch.kv.capacity import append_cost, pages_needed
from llmds_torch.kv.defrag import fragmentation, plan_compaction
from llmds_torch.kv.errors import InvariantViolation, TransactionError
from llmds_torch.kv.eviction import make_policy
from llmds_torch.kv.invariants import check_invariants
from llmds_torch.kv.prefix_index import HashFn, as_bytes, new_cache_salt, sha256
from llmds_torch.kv.prefix_match import PrefixMatcher
from llmds_torch.kv.sequence import (Sequence, int32_bytes, le_bytes, token_array, validate_token_batch,
                                     validate_token_ids)
from llmds_torch.kv.transaction import Snapshot
from llmds_torch.kv.write_tracker import WriteTracker

NOT_OWNED = -1


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
    check_writes : bool
        Debug mode: track every layer's write slot by slot instead of counting layers against the
        issued slot mapping (see ``WriteTracker``); same results, O(batch) per layer.
    """

    def __init__(self, num_pages: int, page_size: int, *, num_layers: int = 1, salt=None,
                 verify_tokens: bool = True, max_context_len: int | None = None,
                 max_num_pages: int | None = None, eviction_policy="lru", hash_fn: HashFn | None = None,
                 on_resize: Callable[[int], None] | None = None, check_writes: bool = False):
        if num_pages < 1 or page_size < 1 or num_layers < 1:
            raise ValueError("num_pages, page_size and num_layers must be positive")
        self.page_size = page_size
        self.num_layers = num_layers
        self.verify_tokens = verify_tokens
        self.max_context_len = max_context_len
        self.max_num_pages = max(max_num_pages or num_pages, num_pages)
        self.on_resize = on_resize
        self.prefix = PrefixMatcher(page_size, new_cache_salt() if salt is None else as_bytes(salt, "salt"),
                                    hash_fn or sha256, verify_tokens)
        self.index = self.prefix.index
        self.cache_salt = self.prefix.cache_salt
        self.allocator = PageAllocator(num_pages, make_policy(eviction_policy), self._evicted)
        self._prompt_memo = None  # (the caller's list, a copy, its token bytes)
        self._txn: Snapshot | None = None
        self.seqs: dict[int, Sequence] = {}
        self._next_seq_id = 0
        self.writes = WriteTracker(num_pages * page_size, num_layers, checked=check_writes)
        self.tables = BlockTables()
        self._batch_memo = None
        self._epoch = 0  # bumped whenever a sequence is released (its row may be reused)
        self.page_owner = np.full(num_pages, NOT_OWNED, dtype=np.int64)  # [num_pages]
        self.page_fill = np.zeros(num_pages, dtype=np.int64)  # [num_pages]: reserved slots of owned pages
        self.pending_copies: list[tuple[int, int]] = []
        self.evict_listener: Callable[[int], None] | None = None  # sees a page before the index forgets it
        self.counters = dict(prefix_query_tokens=0, prefix_hit_tokens=0, cow_copies=0, refusals=0,
                             hash_collisions=0, pages_moved=0, compactions=0, grows=0, shrinks=0)

    # ------------------------------------------------------------------ properties
    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    @property
    def slot_layers(self) -> np.ndarray:
        """Which layers wrote each slot: ``[num_slots, words]`` uint64, a bit per layer."""
        self.writes.flush()
        return self.writes.slot_layers

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self.seqs

    def _seq(self, seq_id) -> Sequence:
        seq = self.seqs.get(seq_id) if isinstance(seq_id, (int, np.integer)) else None
        if seq is None:
            raise UnknownSequence(f"sequence {seq_id!r} is not attached (never attached, or already detached)")
        return seq

    def _seqs(self, seq_ids) -> list[Sequence]:
        """The sequences of ``seq_ids`` (``UnknownSequence`` for any that is not attached)."""
        if all(type(s) is int for s in seq_ids):
            try:
                return [self.seqs[s] for s in seq_ids]
            except KeyError:
                pass
        return [self._seq(s) for s in seq_ids]

    def num_tokens(self, seq_id: int) -> int:
        """Tokens reserved so far (prompt plus appended)."""
        return self._seq(seq_id).num_tokens

    def num_written(self, seq_id: int) -> int:
        """Tokens whose KV every layer has written."""
        return self._seq(seq_id).num_written

    def num_cached_tokens(self, seq_id: int) -> int:
        """Prompt tokens whose KV was found in the cache (a multiple of ``page_size``)."""
        return self._seq(seq_id).num_cached

    def token_ids(self, seq_id: int) -> list[int]:
        """Every token of the sequence (prompt plus appended)."""
        return self._seq(seq_id).tokens.tolist()

    def pending_token_ids(self, seq_id: int) -> list[int]:
        """The reserved tokens whose KV is not written yet (``tokens[num_written:]``)."""
        seq = self._seq(seq_id)
        return seq.tokens[seq.num_written:].tolist()

    def pages(self, seq_id: int) -> list[int]:
        return list(self._seq(seq_id).pages)

    # ------------------------------------------------------------------ capacity
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
            self.writes.page_rows(self.page_size)[rows] = 0
        return pages

    def grow(self, new_num_pages: int) -> None:
        """Add free pages up to ``new_num_pages`` (storage first, through ``on_resize``)."""
        if new_num_pages <= self.num_pages:
            return
        if self.on_resize is not None:
            self.on_resize(new_num_pages)
        extra = new_num_pages - self.num_pages
        self.allocator.grow(new_num_pages)
        writes = self.writes
        fresh = np.zeros((extra * self.page_size, writes.slot_layers.shape[1]), dtype=np.uint64)
        writes.slot_layers = np.concatenate([writes.slot_layers, fresh])
        self.page_owner = np.concatenate([self.page_owner, np.full(extra, NOT_OWNED, np.int64)])
        self.page_fill = np.concatenate([self.page_fill, np.zeros(extra, np.int64)])
        self.max_num_pages = max(self.max_num_pages, new_num_pages)
        self.counters["grows"] += 1

    # ------------------------------------------------------------------ prefix lookup
    def _prompt_bytes(self, token_ids) -> bytes:
        """The validated prompt tokens as little-endian int32 bytes (the same list passed to
        ``can_attach`` and then ``attach`` is validated once)."""
        memo = self._prompt_memo
        if memo is not None and memo[0] is token_ids and memo[1] == token_ids:
            return memo[2]
        token_bytes = int32_bytes(token_ids)
        if type(token_ids) is list:
            self._prompt_memo = (token_ids, list(token_ids), token_bytes)
        return token_bytes

    def _prompt(self, token_ids) -> tuple[array, bytes]:
        """``_prompt_bytes`` plus the tokens as a new int32 ``array``."""
        token_bytes = self._prompt_bytes(token_ids)
        return token_array(token_bytes), token_bytes

    def pending_prefix_tokens(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Leading tokens of this prompt, after its published (cached) prefix, that lie on full
        pages some live sequence has reserved with exactly these tokens but not yet published: a
        multiple of ``page_size``. Holding the prompt back until they are published turns them into
        prefix hits."""
        token_bytes = self._prompt_bytes(token_ids)
        return self.prefix.pending_tokens(token_bytes, self.prefix.salt_block(salt, extra_key))

    @property
    def pending_keys(self) -> dict[bytes, int]:
        """Key -> full pages reserved under it that are not yet published."""
        return self.prefix.pending_keys

    def _evicted(self, page: int) -> None:
        if self.evict_listener is not None:
            self.evict_listener(page)
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
        self.writes.flush()
        self._txn = snapshot = Snapshot.take(self)
        self.writes.on_flush = lambda slots: snapshot.log_slots(self.writes.slot_layers, slots)
        try:
            yield
        except BaseException:
            self._txn = None
            self.writes.on_flush = None
            self.writes.forget()
            snapshot.restore(self)
            raise
        finally:
            self._txn = None
            self.writes.on_flush = None
            self.allocator.journal = None

    def _forbid_in_transaction(self, what: str) -> None:
        if self._txn is not None:
            raise TransactionError(f"{what} cannot run inside a transaction")

    def _attach_need(self, num_tokens: int, hit_pages: list[int]) -> tuple[bool, int]:
        """(whether attaching fits now, pages it takes from what is obtainable)."""
        new_pages = pages_needed(num_tokens, self.page_size) - len(hit_pages)
        obtainable = self._obtainable()
        if new_pages + len(hit_pages) <= obtainable:  # fits even if every hit page were evictable
            return True, new_pages
        # Hit pages that sit in the evictable set (cached, unpinned) stop being evictable once taken.
        a, hits = self.allocator, np.asarray(hit_pages, dtype=np.int64)
        needed = new_pages + int(np.count_nonzero((a.state[hits] == CACHED) & (a.pins[hits] == 0)))
        return needed <= obtainable, needed

    def _check_context(self, num_tokens: int, what: str) -> None:
        if self.max_context_len is not None and num_tokens > self.max_context_len:
            raise ContextWindowExceeded(f"{what} would hold {num_tokens} tokens; the context window is "
                                        f"{self.max_context_len}")

    # ------------------------------------------------------------------ sequence operations
    def can_attach(self, token_ids, *, salt=None, extra_key=None) -> bool:
        """Whether ``attach`` would succeed now. Given an int, assumes no prefix hit."""
        if isinstance(token_ids, (int, np.integer)):
            needed = pages_needed(int(token_ids), self.page_size)
            fits_context = self.max_context_len is None or token_ids <= self.max_context_len
            return fits_context and needed <= self._obtainable()
        token_bytes = self._prompt_bytes(token_ids)
        num_tokens = len(token_bytes) // 4
        if self.max_context_len is not None and num_tokens > self.max_context_len:
            return False
        hit_pages, _, _ = self.prefix.match(token_bytes, self.prefix.salt_block(salt, extra_key))
        return self._attach_need(num_tokens, hit_pages)[0]

    def attach(self, token_ids, *, salt=None, extra_key=None) -> int:
        """Start a sequence with prompt ``token_ids``; reuse cached full pages of its prefix,
        allocate the rest. Returns the new sequence id."""
        tokens, token_bytes = self._prompt(token_ids)
        self._check_context(len(tokens), "the prompt")
        salt_block = self.prefix.salt_block(salt, extra_key)
        hit_pages, keys, collisions = self.prefix.match(token_bytes, salt_block)
        fits, needed = self._attach_need(len(tokens), hit_pages)
        if not fits:
            self._refuse(f"attach needs {needed} pages; {self.allocator.num_free} free, "
                         f"{self.allocator.num_evictable} evictable, {self.max_num_pages - self.num_pages} "
                         f"more may be grown")
        num_new = pages_needed(len(tokens), self.page_size) - len(hit_pages)
        self._make_room(num_new)  # may raise: before anything is taken
        self.allocator.incref_many(hit_pages)  # take them before allocation can evict them
        new_pages = self._allocate(num_new)
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        num_cached = len(hit_pages) * self.page_size
        pages = hit_pages + new_pages
        row = self.tables.new_row(pages, len(tokens), num_cached)
        seq = Sequence(seq_id, tokens, pages, salt_block, self.tables, row, num_cached, list(keys), len(hit_pages),
                       token_bytes)
        self.seqs[seq_id] = seq
        self.prefix.add_pending(seq.keys[seq.num_published:])
        self._reserve(seq, num_cached, len(tokens))
        self.counters["prefix_query_tokens"] += len(tokens)
        self.counters["prefix_hit_tokens"] += num_cached
        self.counters["hash_collisions"] += collisions
        return seq_id

    def available_pages(self) -> int:
        """Pages an allocation could obtain now: free, evictable, and growth up to ``max_num_pages``."""
        return self._obtainable()

    def _batch(self, seq_ids) -> tuple[list[Sequence], np.ndarray, np.ndarray, bool]:
        """The sequences of ``seq_ids``, their block-table rows (int64 ``[batch]``), ids (int64
        ``[batch]``) and whether they are distinct. The last answer is reused while no sequence was
        released, so the calls of one decode step look a batch up once."""
        key = tuple(seq_ids)
        memo = self._batch_memo
        if memo is not None and memo[0] == key and memo[1] == self._epoch:
            return memo[2]
        seqs = self._seqs(key)
        rows = np.fromiter((seq.row for seq in seqs), dtype=np.int64, count=len(seqs))
        ids = np.fromiter((seq.seq_id for seq in seqs), dtype=np.int64, count=len(seqs))
        answer = seqs, rows, ids, len(set(ids.tolist())) == len(seqs)
        self._batch_memo = (key, self._epoch, answer)
        return answer

    def _append_cost(self, rows: np.ndarray, add) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens now, copy-on-write needed, new pages, pages now), each ``[batch]``."""
        t = self.tables
        num_tokens, num_pages = t.num_tokens[rows], t.num_pages[rows]
        shared = self.allocator.refcount[t.table[rows, num_pages - 1]] > 1
        cow, extra = append_cost(num_tokens, num_pages, shared, add, self.page_size)
        return num_tokens, cow, extra, num_pages

    def pages_to_append(self, seq_ids, num_tokens: int = 1) -> int:
        """Pages (new ones and copy-on-write copies) appending ``num_tokens`` to each of
        ``seq_ids`` (an id or a list) would take."""
        ids = [seq_ids] if isinstance(seq_ids, (int, np.integer)) else seq_ids
        rows = self._batch(ids)[1]
        _, cow, extra, _ = self._append_cost(rows, num_tokens)
        return int(extra.sum() + cow.sum())

    def can_append(self, seq_ids, num_tokens: int = 1) -> bool:
        """Whether appending ``num_tokens`` to each of ``seq_ids`` (an id or a list) fits now."""
        ids = [seq_ids] if isinstance(seq_ids, (int, np.integer)) else seq_ids
        rows = self._batch(ids)[1]
        if self.max_context_len is not None and (self.tables.num_tokens[rows] + num_tokens > self.max_context_len).any():
            return False
        return self.pages_to_append(ids, num_tokens) <= self._obtainable()

    def append(self, seq_id: int, token_ids) -> None:
        """Reserve slots for ``token_ids`` after the sequence's tokens (copy-on-write first when
        the page to write is shared)."""
        self.append_batch([seq_id], [token_ids])

    def append_batch(self, seq_ids: SequenceOf[int], token_ids) -> None:
        """Append to many sequences at once: ``token_ids[i]`` (an int, or a list of ints) goes to
        ``seq_ids[i]``; a 1-D array or tensor gives one token each, a 2-D one a row each. All or
        nothing: on any error no sequence changes. Which sequences need a page or a copy-on-write
        copy is found with array operations over the whole batch."""
        if len(seq_ids) != len(token_ids):
            raise ValueError(f"{len(seq_ids)} sequence ids but {len(token_ids)} token lists")
        seqs, rows, ids, distinct = self._batch(seq_ids)
        if not distinct:
            raise ValueError("append_batch got the same sequence id twice")
        flat, counts = validate_token_batch(token_ids)  # one check for the whole batch
        if counts is not None and max(counts) == 1:
            counts = None
        self.writes.flush()
        page_size, t = self.page_size, self.tables
        add = 1 if counts is None else np.array(counts, dtype=np.int64)
        old, cow, extra, num_pages = self._append_cost(rows, add)
        new = old + add
        if self.max_context_len is not None and (new > self.max_context_len).any():
            i = int(np.argmax(new > self.max_context_len))
            self._check_context(int(new[i]), f"sequence {seqs[i].seq_id}")
        needed = int(cow.sum() + extra.sum())
        if needed > self._obtainable():
            self._refuse(f"append needs {needed} pages; {self.allocator.num_free} free, "
                         f"{self.allocator.num_evictable} evictable")
        self.pending_copies = []
        fresh = self._allocate(needed) if needed else []
        if self._txn is not None:
            for seq in seqs:
                self._txn.touch(seq)
        i, unused, refcount = 0, [], self.allocator.refcount
        grow = np.flatnonzero(extra) if counts is None and fresh and not cow.any() else ()
        if len(grow) == len(fresh) > 0:  # a decode step: one new page each at most
            t.push(rows[grow], np.asarray(fresh, dtype=np.int32))
            for j, page in zip(grow.tolist(), fresh):
                seqs[j].pages.append(page)
            fresh = []
        for j in np.flatnonzero(cow | (extra > 0)).tolist() if fresh else ():
            seq = seqs[j]
            if cow[j]:
                # A parent and its fork in one batch: after the first copies the shared page, the
                # last holder writes it in place, and the page reserved for its copy goes back.
                if refcount[seq.pages[-1]] > 1:
                    self._copy_on_write(seq, fresh[i])
                else:
                    unused.append(fresh[i])
                i += 1
            if extra[j]:
                pages = fresh[i:i + int(extra[j])]
                seq.pages.extend(pages)
                t.extend(seq.row, pages)
                i += len(pages)
        if counts is None:  # a decode step
            for seq, token in zip(seqs, flat):
                seq.tokens.append(token)
            t.num_tokens[rows] = new
            self.prefix.extend_keys([seqs[j] for j in np.flatnonzero(new % page_size == 0).tolist()])
            pages = t.table[rows, (new - 1) // page_size]
            self.page_owner[pages] = ids
            self.page_fill[pages] = old % page_size + 1
        else:
            offset = 0
            for seq, n in zip(seqs, counts):
                start = len(seq.tokens)
                seq.tokens.extend(flat[offset:offset + n])
                offset += n
                t.num_tokens[seq.row] = start + n
                self.prefix.extend_keys([seq])
                self._reserve(seq, start, start + n)
        self.allocator.release(unused)

    def _reserve(self, seq: Sequence, start: int, end: int) -> None:
        """Mark the pages holding positions ``[start, end)`` as owned by ``seq`` for writing."""
        if end <= start:
            return
        page_size = self.page_size
        first, last = start // page_size, (end - 1) // page_size + 1
        pages = self.tables.table[seq.row, first:last]
        self.page_owner[pages] = seq.seq_id
        self.page_fill[pages] = page_size  # every page but the last is reserved to its end
        self.page_fill[pages[-1]] = len(seq.tokens) - (last - 1) * page_size

    def _copy_on_write(self, seq: Sequence, new: int) -> None:
        """Give ``seq`` the fresh page ``new`` in place of its shared last page."""
        old = seq.pages[-1]
        rows = self.writes.page_rows(self.page_size)
        rows[new] = rows[old]
        seq.pages[-1] = new
        self.tables.put(seq.row, len(seq.pages) - 1, new)
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
        row = self.tables.new_row(seq.pages, len(seq.tokens), seq.num_written)
        child = Sequence(child_id, seq.tokens[:], list(seq.pages), seq.salt_block, self.tables, row,
                         seq.num_cached, list(seq.keys), seq.num_published, seq.prompt_bytes)
        self.seqs[child_id] = child
        self.prefix.add_pending(child.keys[child.num_published:])
        return child_id

    def detach(self, seq_id: int) -> None:
        """Release the sequence's pages, tail first (so under LRU a prefix's tail is evicted
        before its head). Published pages become cached, the others free."""
        seq = self.seqs.get(seq_id) if type(seq_id) is int else None
        if seq is None:
            seq = self._seq(seq_id)
        if self._txn is not None and seq_id < self._txn.first_new_seq_id:
            raise TransactionError(f"sequence {seq_id} existed before the transaction; detach it outside")
        if seq.num_published < len(seq.keys):
            self.prefix.drop_pending(seq.keys[seq.num_published:])
        if self.writes.issued is not None:
            self.writes.flush()
        t, row = self.tables, seq.row
        pages = t.table[row, len(seq.pages) - 1::-1]  # tail first
        if t.num_written[row] < len(seq.tokens):  # pages reserved for writing go back unowned
            owner = self.page_owner
            owner[pages[owner[pages] == seq_id]] = NOT_OWNED
        self.allocator.release(pages)
        t.release(row)
        del self.seqs[seq_id]
        self._epoch += 1

    # ------------------------------------------------------------------ writes
    def block_table(self, seq_ids: SequenceOf[int]) -> np.ndarray:
        """Pages of each sequence, int32 ``[batch, max pages]`` padded with -1."""
        return self.tables.padded(self._batch(seq_ids)[1])

    def page_table_csr(self, seq_ids: SequenceOf[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FlashInfer's CSR block table: indptr int32 ``[batch + 1]``, indices int32
        ``[indptr[-1]]``, last page's token count int32 ``[batch]`` (1..page_size)."""
        rows = self._batch(seq_ids)[1]
        indptr, indices = self.tables.csr(rows)
        return indptr, indices, ((self.tables.num_tokens[rows] - 1) % self.page_size + 1).astype(np.int32)

    def seq_lens(self, seq_ids: SequenceOf[int]) -> np.ndarray:
        """Reserved tokens of each sequence, int32 ``[batch]``."""
        return self.tables.num_tokens[self._batch(seq_ids)[1]].astype(np.int32)

    def slot_mapping(self, seq_ids: SequenceOf[int], num_tokens=None) -> np.ndarray:
        """Slots of every reserved-but-unwritten token (or of the first ``num_tokens[i]`` of
        sequence ``i``: an int for all, or one per sequence), in batch order then position order.
        Writing the returned array through ``record_write`` in every layer costs O(1) per layer.

        Returns
        -------
        np.ndarray
            int64 ``[sum of pending tokens]``.
        """
        t, page_size = self.tables, self.page_size
        if num_tokens is None and len(seq_ids) == 1:  # one sequence: its pending run, no batch arrays
            seq = self._seq(seq_ids[0])
            start, end = seq.num_written, len(seq.tokens)
            if end - start > 1:
                mapping = t.run_slots(seq.row, start, end, page_size)
                self.writes.issue(mapping, [seq], True)
                return mapping
        seqs, rows, ids, distinct = self._batch(seq_ids)
        if num_tokens is None and distinct and len(seqs):
            written = t.num_written[rows]
            if ((t.num_tokens[rows] - written) == 1).all():  # a decode step: one slot each
                mapping = t.table[rows, written // page_size].astype(np.int64) * page_size + written % page_size
                self.writes.issue(mapping, seqs, True, rows)
                return mapping
        counts = None
        if num_tokens is not None:
            counts = [num_tokens] * len(seqs) if isinstance(num_tokens, (int, np.integer)) else list(num_tokens)
            if len(counts) != len(seqs):
                raise ValueError(f"{len(seqs)} sequence ids but {len(counts)} token counts")
            for seq, n in zip(seqs, counts):
                if not 0 <= n <= len(seq.tokens) - seq.num_written:
                    raise ValueError(f"sequence {seq.seq_id} has {len(seq.tokens) - seq.num_written} pending "
                                     f"tokens; asked to map {n}")
        start = t.num_written[rows]
        end = t.num_tokens[rows] if counts is None else start + np.asarray(counts, dtype=np.int64)
        covers_all = counts is None or bool((end == t.num_tokens[rows]).all())
        mapping = t.slots(rows, start, end, page_size) if len(seqs) else np.zeros(0, dtype=np.int64)
        if distinct:
            self.writes.issue(mapping, seqs, covers_all)
        else:
            self.writes.flush()
        return mapping

    def _slots(self, seq: Sequence, start: int, end: int) -> np.ndarray:
        return self.tables.run_slots(seq.row, start, end, self.page_size)

    def check_write(self, layer: int, slots: np.ndarray) -> None:
        """Raise ``ValueError`` unless ``layer`` is valid and every slot is pending and not yet
        written by that layer (nothing changes)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.num_layers})")
        if self.writes.is_issued(slots):
            self.writes.check_issued(layer)
            return
        self.writes.flush()
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
        if self.writes.wrote(layer, slots):
            raise ValueError(f"layer {layer} already wrote some of these slots")

    def record_write(self, layer: int, slots: np.ndarray, *, checked: bool = False) -> None:
        """Count a write of ``slots`` by ``layer``; publish pages that become fully written.
        ``checked``: the caller already ran ``check_write`` on exactly these arguments."""
        writes = self.writes
        issued = writes.issued
        if issued is not None and slots is issued.slots:  # the O(1) path, checks included
            if not checked and not 0 <= layer < self.num_layers:
                raise ValueError(f"layer {layer} out of range [0, {self.num_layers})")
            issued = writes.count_layer(layer)
            if issued is not None:
                self._written(issued)
            return
        if not checked:
            self.check_write(layer, slots)
        writes.record(layer, slots)
        done = slots[writes.fully_written(slots)]
        if not done.size:
            return
        owners, counts = np.unique(self.page_owner[done // self.page_size], return_counts=True)
        for seq_id, count in zip(owners.tolist(), counts.tolist()):
            seq = self.seqs[seq_id]
            if count == len(seq.tokens) - seq.num_written:
                self._complete(seq)  # every pending token of the sequence is written: no scan
            else:
                self._advance(seq)

    def _written(self, issued) -> None:
        """Every layer wrote the issued mapping: advance (or complete) its sequences."""
        if not issued.covers_all:
            for seq in issued.sequences:
                self._advance(seq)
            return
        self.page_owner[issued.slots // self.page_size] = NOT_OWNED
        page_size, txn = self.page_size, self._txn
        if issued.rows is not None:  # one token each: array operations, publishing only filled pages
            if txn is not None:
                for seq in issued.sequences:
                    txn.touch(seq)
            t = self.tables
            t.num_written[issued.rows] = lengths = t.num_tokens[issued.rows]
            self._publish([issued.sequences[j] for j in np.flatnonzero(lengths % page_size == 0).tolist()])
            return
        for seq in issued.sequences:
            if txn is not None:
                txn.touch(seq)
            seq.num_written = len(seq.tokens)
        self._publish(issued.sequences)

    def mark_written(self, seq_id: int, num_tokens: int | None = None) -> None:
        """Declare the KV of the sequence's pending tokens (or the first ``num_tokens`` of them)
        computed in every layer, as a simulator does instead of writing tensors."""
        seq = self._seq(seq_id)
        end = seq.num_tokens if num_tokens is None else min(seq.num_tokens, seq.num_written + num_tokens)
        slots = self._slots(seq, seq.num_written, end)
        self.writes.flush()
        self.writes.mark_all(slots)
        self._advance(seq)

    def _advance(self, seq: Sequence) -> None:
        """Move ``num_written`` past every fully written token and publish completed pages."""
        start = seq.num_written
        if start == seq.num_tokens:
            return
        slots = self._slots(seq, start, seq.num_tokens)
        not_done = np.flatnonzero(~self.writes.fully_written(slots))
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
        self._publish([seq])

    def _complete(self, seq: Sequence) -> None:
        """All reserved tokens of ``seq`` are written: release its pages from writing, publish."""
        if self._txn is not None:
            self._txn.touch(seq)
        page_size, owner = self.page_size, self.page_owner
        for i in range(seq.num_written // page_size, (len(seq.tokens) - 1) // page_size + 1):
            owner[seq.pages[i]] = NOT_OWNED
        seq.num_written = len(seq.tokens)
        self._publish([seq])

    def _publish(self, seqs: list[Sequence]) -> None:
        """Index the full, fully written pages of each sequence under their (already computed) keys."""
        page_size, step = self.page_size, 4 * self.page_size
        keys, pages, chunks, parents, salts = [], [], [], [], []
        for seq in seqs:
            start, full = seq.num_published, seq.num_written // page_size
            if start >= full:
                continue
            if full * step <= len(seq.prompt_bytes):
                data = seq.prompt_bytes[start * step:full * step]
            else:
                data = le_bytes(seq.tokens[start * page_size:full * page_size])
            new_keys = seq.keys[start:full]
            keys += new_keys
            pages += seq.pages[start:full]
            chunks += [data[j * step:(j + 1) * step] for j in range(full - start)]
            parents.append(seq.keys[start - 1] if start else b"")
            parents += new_keys[:-1]
            salts += [seq.salt_block] * (full - start)
            seq.num_published = full
        if not keys:
            return
        indexed = self.index.publish_many(keys, pages, chunks, parents, salts)
        self.allocator.published[indexed] = True
        if self._txn is not None:
            self._txn.published_pages.extend(indexed)
        self.prefix.drop_pending(keys)

    # ------------------------------------------------------------------ pins
    def _published_chain(self, token_ids, salt, extra_key) -> list[int]:
        tokens = validate_token_ids(token_ids)
        full = len(tokens) // self.page_size
        token_bytes = np.asarray(tokens[:full * self.page_size] + [0], dtype="<i4").tobytes()
        pages, _, _ = self.prefix.match(token_bytes, self.prefix.salt_block(salt, extra_key))
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
        """Share of page ids below the highest non-free page that are free (0 = compact)."""
        return fragmentation(self.allocator.state)

    def plan_compaction(self, order: str = "sequence") -> tuple[list[list[tuple[int, int]]], np.ndarray]:
        """Moves that pack the non-free pages into ids ``[0, live)``; see ``defrag.plan_compaction``."""
        return plan_compaction(self.allocator.state, [self.seqs[s].pages for s in sorted(self.seqs)], order)

    def apply_compaction(self, old_to_new: np.ndarray, new_num_pages: int | None = None) -> int:
        """Renumber every structure after the moves of ``plan_compaction`` were carried out, and
        optionally drop the (free) pages at ids ``>= new_num_pages``. Returns pages moved."""
        self._forbid_in_transaction("compaction")
        moved = int(np.count_nonzero((old_to_new >= 0) & (old_to_new != np.arange(self.num_pages))))
        n = self.num_pages if new_num_pages is None else new_num_pages
        for seq in self.seqs.values():
            seq.pages = old_to_new[seq.pages].tolist()
        self.tables.renumber(old_to_new)
        live = np.flatnonzero(old_to_new >= 0)
        self.writes.flush()
        old = self.writes.page_rows(self.page_size)
        new = np.zeros((n,) + old.shape[1:], dtype=np.uint64)
        new[old_to_new[live]] = old[live]
        self.writes.slot_layers = new.reshape(n * self.page_size, -1)
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
        """Raise ``InvariantViolation`` if the bookkeeping is inconsistent (see ``invariants``)."""
        check_invariants(self)
