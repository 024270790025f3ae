"""Transactions of the block manager: everything a block of calls changed, undone when it raises.

``BlockManager.transaction()`` takes a ``Snapshot`` when the block starts; the manager reports to it
what it is about to change (sequences it modifies, slots a write marks, pages it evicts or
publishes); ``restore`` puts everything back. Sequences are saved only when first touched, the free
list and eviction order only as far as they change (``allocator.Journal``), so a transaction costs a
few page-array copies (memcpy) at start plus O(1) per touched sequence and per page taken.

Pages evicted inside the transaction stay evicted: their storage may have been reused (a
copy-on-write copy, a write), so their prefix is no longer there to restore.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmds_torch.kv.allocator import CACHED, FREE
from llmds_torch.kv.errors import TransactionError  # noqa: F401  (its old import path)


@dataclass(slots=True)
class SavedSequence:
    """What a transaction may change in one pre-existing sequence (tokens, pages and keys only grow;
    copy-on-write replaces the last page)."""

    num_tokens: int
    num_pages: int
    last_page: int
    num_written: int
    num_cached: int
    num_keys: int
    num_published: int


@dataclass(slots=True)
class Snapshot:
    """The manager's state when a transaction began, plus a log of what changed since."""

    first_new_seq_id: int
    counters: dict
    num_pages: int
    max_num_pages: int
    state: np.ndarray
    refcount: np.ndarray
    published: np.ndarray
    pins: np.ndarray
    evictions: int
    page_owner: np.ndarray
    page_fill: np.ndarray
    sequences: dict[int, SavedSequence] = field(default_factory=dict)
    slot_log: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (slots, their old rows)
    evicted: list[int] = field(default_factory=list)
    published_pages: list[int] = field(default_factory=list)

    @classmethod
    def take(cls, manager) -> Snapshot:
        a = manager.allocator
        a.start_journal()  # the free list and eviction order, saved only as they change
        return cls(manager._next_seq_id, dict(manager.counters), a.num_pages, manager.max_num_pages,
                   a.state.copy(), a.refcount.copy(), a.published.copy(), a.pins.copy(), a.evictions,
                   manager.page_owner.copy(), manager.page_fill.copy())

    def touch(self, seq) -> None:
        """Save ``seq`` before its first change inside the transaction (new sequences need nothing)."""
        if seq.seq_id < self.first_new_seq_id and seq.seq_id not in self.sequences:
            self.sequences[seq.seq_id] = SavedSequence(len(seq.tokens), len(seq.pages), seq.pages[-1],
                                                       seq.num_written, seq.num_cached, len(seq.keys),
                                                       seq.num_published)

    def log_slots(self, slot_layers: np.ndarray, slots: np.ndarray) -> None:
        """Save the write bits of ``slots`` before a write changes them."""
        self.slot_log.append((slots.copy(), slot_layers[slots].copy()))

    def restore(self, manager) -> None:
        """Put ``manager`` back as it was at ``take``, except ``refusals`` and the pages cached before
        that were evicted (free now, and counted in ``evictions``)."""
        for seq_id in [s for s in manager.seqs if s >= self.first_new_seq_id]:
            manager.tables.release(manager.seqs.pop(seq_id).row)
        for seq_id, saved in self.sequences.items():
            seq = manager.seqs[seq_id]
            del seq.tokens[saved.num_tokens:]
            manager.tables.num_tokens[seq.row] = saved.num_tokens
            del seq.pages[saved.num_pages:]
            seq.pages[-1] = saved.last_page
            manager.tables.set(seq.row, seq.pages)
            del seq.keys[saved.num_keys:]
            seq.num_written, seq.num_cached, seq.num_published = (saved.num_written, saved.num_cached,
                                                                  saved.num_published)
        for slots, rows in reversed(self.slot_log):
            manager.writes.slot_layers[slots] = rows
        for page in self.published_pages:
            manager.index.forget(page)
        a = manager.allocator
        state, published = self.state, self.published
        evicted = [p for p in dict.fromkeys(self.evicted) if p < self.num_pages and state[p] == CACHED]
        state[evicted] = FREE
        published[evicted] = False
        free_list, policy_order = a.end_journal()
        a.state, a.refcount, a.published, a.pins = state, self.refcount, published, self.pins
        a.num_pages = self.num_pages
        a.free_list = free_list + evicted
        a.evictions = self.evictions + len(evicted)  # pages cached inside and evicted are free again anyway
        if policy_order is not None:
            gone = set(evicted)
            while len(a.policy):
                a.policy.victim()
            for page in policy_order:
                if page not in gone:
                    a.policy.insert(page)
        manager.writes.slot_layers = manager.writes.slot_layers[:self.num_pages * manager.page_size]
        manager.page_owner, manager.page_fill = self.page_owner, self.page_fill
        manager.max_num_pages = self.max_num_pages
        refusals = manager.counters["refusals"]
        manager.counters.clear()
        manager.counters.update(self.counters, refusals=refusals)
        manager._epoch += 1
        manager.pending_copies = []
        manager.prefix.rebuild_pending(manager.seqs.values())
