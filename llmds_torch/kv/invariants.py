"""Consistency checks of a block manager's bookkeeping (tests and debugging; never on a hot path)."""

import numpy as np

from llmds_torch.kv.allocator import CACHED, FREE, USED
from llmds_torch.kv.capacity import pages_needed
from llmds_torch.kv.errors import InvariantViolation


def check_invariants(manager) -> None:
    """Raise ``InvariantViolation`` if the bookkeeping is inconsistent: every page in exactly
    one state, refcount = block-table references, the index naming only cached or used
    published pages, pending slots only in pages owned by one sequence."""
    a = manager.allocator

    def fail(msg):
        raise InvariantViolation(msg)

    refs = np.zeros(manager.num_pages, dtype=np.int64)
    for seq in manager.seqs.values():
        np.add.at(refs, np.asarray(seq.pages, dtype=np.int64), 1)
        if len(seq.pages) != pages_needed(seq.num_tokens, manager.page_size):
            fail(f"sequence {seq.seq_id} has {len(seq.pages)} pages for {seq.num_tokens} tokens")
        if manager.tables.table[seq.row, :manager.tables.num_pages[seq.row]].tolist() != seq.pages or \
                (manager.tables.table[seq.row, len(seq.pages):] != -1).any():
            fail(f"block-table row {seq.row} of sequence {seq.seq_id} differs from its pages")
        if manager.tables.num_tokens[seq.row] != len(seq.tokens):
            fail(f"block-table token count of sequence {seq.seq_id} differs from its tokens")
        if seq.num_written < seq.num_tokens:
            pending_pages = {seq.pages[i // manager.page_size] for i in range(seq.num_written, seq.num_tokens)}
            for page in pending_pages:
                if a.refcount[page] != 1 or manager.page_owner[page] != seq.seq_id:
                    fail(f"page {page} with pending slots of sequence {seq.seq_id} is shared or unowned")
        if len(seq.keys) != seq.num_tokens // manager.page_size or seq.num_published != seq.num_written // manager.page_size:
            fail(f"sequence {seq.seq_id} has {len(seq.keys)} page keys, {seq.num_published} published, for "
                 f"{seq.num_tokens} tokens ({seq.num_written} written)")
    pending = dict(manager.pending_keys)
    manager.prefix.rebuild_pending(manager.seqs.values())
    if pending != manager.pending_keys:
        fail("pending page keys differ from the sequences' unpublished full pages")
    if not np.array_equal(refs, a.refcount):
        bad = np.flatnonzero(refs != a.refcount)[:5]
        fail(f"refcount differs from block-table references at pages {bad.tolist()}")
    free = np.zeros(manager.num_pages, dtype=np.int64)
    np.add.at(free, np.asarray(a.free_list, dtype=np.int64), 1)
    if (free > 1).any():
        fail("a page appears twice in the free list")
    if not np.array_equal(free == 1, a.state == FREE):
        fail("free list and FREE state disagree")
    if not np.array_equal(a.state == USED, refs > 0):
        fail("USED state and positive refcount disagree")
    cached = a.state == CACHED
    in_policy = np.zeros(manager.num_pages, dtype=bool)
    in_policy[list(a.policy)] = True
    if not np.array_equal(in_policy, cached & (a.pins == 0)):
        fail("evictable set differs from unpinned cached pages")
    if not np.array_equal(cached & ~a.published, np.zeros_like(cached)):
        fail("a cached page is not published")
    for key, page in manager.index.page_of.items():
        if a.state[page] == FREE or manager.index.key_of.get(page) != key or not a.published[page]:
            fail(f"index entry for page {page} is stale")
    index = manager.index
    for child, page in index.child_of.items():
        if index._child_key.get(page) != child or page not in index.key_of or index.tokens_of[page] != child[2]:
            fail(f"token-bytes entry of page {page} is stale")
    if int(np.count_nonzero(a.published)) != len(manager.index):
        fail("published flags and index size disagree")
