"""PagedKVCache: the page pool on a device tensor, driven by the block manager.

Pool layout: one preallocated tensor ``[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]``,
contiguous, so every layer ``pool[l]`` is FlashInfer's NHD paged layout
``[num_pages, 2, page_size, num_kv_heads, head_dim]`` with K at ``[:, 0]`` and V at ``[:, 1]``.
Element strides of the pool, innermost first: ``head_dim`` 1, ``num_kv_heads`` ``D``, ``page_size``
``H*D``, K/V ``P*H*D``, page ``2*P*H*D``, layer ``N*2*P*H*D``. Every page of one layer is one
contiguous run of ``2*P*H*D`` elements, so page copies and moves are flat block copies, one kernel
launch for all layers.

Growing allocates the larger pool and copies the old one into it; shrinking (after compaction put
every live page below the new size) copies the kept prefix into a smaller tensor and drops the old
one, which really returns its memory. Both briefly hold the old and the new pool.

With ``host_pages`` > 0 a ``HostTier`` keeps evicted prefix pages in host memory; every access to the
pool first runs its pending copies (``_flush_host``), so the pool always holds what the bookkeeping says.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from llmds_torch.errors import UnknownSequence
from llmds_torch.kernels.kv_write import kv_write
from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move
from llmds_torch.kv.block_manager import BlockManager
from llmds_torch.kv.config import KVCacheConfig
from llmds_torch.kv.device_upload import DeviceUpload
from llmds_torch.kv.errors import TransactionError
from llmds_torch.kv.host_tier import HostTier

BLOCK_TABLE_PAD = -1
"""Value of ``block_table`` entries past a sequence's pages; kernels never read them."""


class ManagerMethod:
    """A ``BlockManager`` method exposed on ``PagedKVCache`` as is: ``cache.name`` is the bound
    method of ``cache.manager`` (same signature, same docstring)."""

    def __init__(self, name: str):
        self.name = name
        self.__doc__ = getattr(BlockManager, name).__doc__

    def __get__(self, cache, owner=None):
        return self if cache is None else getattr(cache.manager, self.name)


def exposes_manager_methods(*names: str):
    """Class decorator: each of ``names`` becomes a ``ManagerMethod`` of the class."""
    def expose(cls):
        for name in names:
            setattr(cls, name, ManagerMethod(name))
        return cls
    return expose


@dataclass(frozen=True, slots=True)
class DefragReport:
    """What one ``defragment`` call did."""

    order: str
    pages_moved: int
    bytes_moved: int
    launches: int
    evicted: int
    num_pages_before: int
    num_pages_after: int
    fragmentation_before: float
    fragmentation_after: float
    pool_bytes_before: int
    pool_bytes_after: int


# Bookkeeping that moves no KV: the block manager's own methods, reached through the cache.
@exposes_manager_methods("can_attach", "pending_prefix_tokens", "num_cached_tokens", "num_tokens", "num_written",
                         "token_ids", "pending_token_ids", "can_append", "available_pages", "pages_to_append", "fork",
                         "pin_prefix", "unpin_prefix")
class PagedKVCache:
    """A paged KV cache: pool tensor, block tables, prefix sharing, copy-on-write, compaction.

    See ``KVCacheConfig`` for the options and the module docstring for the pool layout.
    """

    def __init__(self, config: KVCacheConfig):
        self.config = config
        self.device = config.torch_device
        self.pool = self._empty_pool(config.num_pages)
        self.manager = BlockManager(
            config.num_pages, config.page_size, num_layers=config.num_layers, salt=config.salt,
            verify_tokens=config.verify_tokens, max_context_len=config.max_context_len,
            max_num_pages=config.max_num_pages, eviction_policy=config.eviction_policy,
            on_resize=self._resize_pool, check_writes=config.check_writes)
        self.host = HostTier(config, self.manager) if config.host_pages else None
        self.bytes_moved = 0
        self.cow_bytes = 0
        self._upload = DeviceUpload(self.device)  # step tables to the device, one pinned transfer on CUDA
        self._last_slots: tuple[torch.Tensor, np.ndarray, int] | None = None  # (issued, host copy, version)
        self._copied_slots: tuple[torch.Tensor, np.ndarray, int] | None = None  # a caller's tensor, copied once

    def _empty_pool(self, num_pages: int) -> torch.Tensor:
        c = self.config
        return torch.empty((c.num_layers, num_pages, 2, c.page_size, c.num_kv_heads, c.head_dim),
                           dtype=c.dtype, device=self.device)

    def _resize_pool(self, num_pages: int) -> None:
        new = self._empty_pool(num_pages)
        keep = min(num_pages, self.pool.shape[1])
        new[:, :keep].copy_(self.pool[:, :keep])
        self.pool = new

    # ------------------------------------------------------------------ shape
    @property
    def page_size(self) -> int:
        return self.config.page_size

    @property
    def num_pages(self) -> int:
        return self.manager.num_pages

    @property
    def max_num_pages(self) -> int:
        """The most pages the pool may ever hold."""
        return self.config.max_num_pages or self.config.num_pages

    @property
    def max_context_len(self) -> int | None:
        """The longest sequence the cache accepts (None: no limit but the pool)."""
        return self.config.max_context_len

    @property
    def pool_bytes(self) -> int:
        """Bytes of device memory the pool occupies."""
        return self.pool.untyped_storage().nbytes()

    def layer(self, layer: int) -> torch.Tensor:
        """One layer's pages, ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (a view)."""
        if not 0 <= layer < self.config.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.config.num_layers})")
        self._flush_host()
        return self.pool[layer]

    def _flush_host(self) -> None:
        """Run the host tier's pending copies (evicted pages out, promoted pages in)."""
        host = self.host
        if host is not None and (host.to_save or host.to_load):
            host.flush(self.pool)

    # ------------------------------------------------------------------ sequences
    def attach(self, token_ids, *, salt=None, extra_key=None) -> int:
        """A new sequence for prompt ``token_ids``; reuses cached full pages of its prefix and
        reserves slots for the rest (with the host tier on, prefix pages found there are brought
        back first and hit too). Returns the sequence id."""
        if self.host is not None:
            self.host.promote(self.pool, token_ids, salt=salt, extra_key=extra_key)
        return self.manager.attach(token_ids, salt=salt, extra_key=extra_key)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing for a block of ``attach`` / ``append`` / ``append_batch`` / ``fork`` /
        ``write`` calls (and ``detach`` of sequences created inside).

        If the block raises, every change made inside is undone: sequences attached or forked
        inside are gone, appended tokens removed, copy-on-write copies released with the original
        pages back in the block tables, the pool back to its size, every counter but ``refusals``
        restored, and ``check_invariants()`` holds. Cached pages evicted on the way stay evicted
        (``stats()`` may show fewer cached pages and more evictions). A pool grown inside keeps its
        previous tensor alive until the block ends, so the rollback never allocates.

        Raises ``TransactionError`` when nested, when a sequence that existed before is detached
        inside, or on ``defragment`` inside.
        """
        if self.manager.in_transaction:
            raise TransactionError("a transaction is already open; transactions do not nest")
        pool, cow_bytes = self.pool, self.cow_bytes
        host_pending = self.host.pending() if self.host is not None else None
        try:
            with self.manager.transaction():
                yield
        except BaseException:
            self.pool, self.cow_bytes, self._last_slots, self._copied_slots = pool, cow_bytes, None, None
            if self.host is not None:
                self.host.forget_since(host_pending)
            raise
        self._defragment_if_fragmented()

    def append(self, seq_id: int, token_ids) -> None:
        """Reserve slots for more tokens; a shared page about to be written is copied first."""
        self.append_batch([seq_id], [token_ids])

    def append_batch(self, seq_ids, token_ids) -> None:
        """One decode step: ``token_ids[i]`` (an int or a list) appended to ``seq_ids[i]``. All
        copy-on-write copies of the step run as one kernel launch."""
        self.manager.append_batch(seq_ids, token_ids)
        copies = self.manager.take_pending_copies()
        self._flush_host()
        if copies:
            src, dst = (torch.tensor(x, dtype=torch.int64, device=self.device) for x in zip(*copies))
            page_copy(self.pool, src, dst, backend=self.config.backend, validate_indices=False)
            self.cow_bytes += len(copies) * self.config.page_bytes

    def detach(self, seq_id: int) -> None:
        """Release a sequence: published pages become cached, the others free."""
        self.manager.detach(seq_id)
        if not self.manager.in_transaction:
            self._defragment_if_fragmented()

    def _defragment_if_fragmented(self) -> None:
        threshold = self.config.defrag_threshold
        if threshold is not None and self.manager.fragmentation() > threshold:
            self.defragment(order="lowest")

    # ------------------------------------------------------------------ reading and writing KV
    def get(self, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Deep copies of the sequence's written KV.

        Returns
        -------
        k, v : ``[num_layers, num_written, num_kv_heads, head_dim]``
        """
        n = self.manager.num_written(seq_id)
        self._flush_host()
        pages = torch.tensor(self.manager.pages(seq_id), dtype=torch.int64, device=self.device)
        c = self.config
        kv = self.pool.index_select(1, pages)  # [L, pages, 2, P, H, D]
        kv = kv.transpose(1, 2).reshape(c.num_layers, 2, -1, c.num_kv_heads, c.head_dim)[:, :, :n]
        return kv[:, 0].contiguous(), kv[:, 1].contiguous()

    def slot_mapping(self, seq_ids, num_tokens=None) -> torch.Tensor:
        """Slots (``page * page_size + offset``) of every reserved token not yet written, in batch
        order then position order: int64 ``[sum of pending tokens]`` on the pool's device. With
        ``num_tokens`` (an int, or one per sequence) only the first that many pending tokens of
        each sequence (a prompt chunk). Valid until the next ``append``, ``detach`` or
        ``defragment`` (which renumbers pages). Writing exactly this tensor in every layer costs
        the cache O(1) bookkeeping per layer and no device-to-host copy."""
        slots = self.manager.slot_mapping(list(seq_ids), num_tokens)
        self._flush_host()
        (tensor,) = self._upload(slots)
        self._last_slots = (tensor, slots, tensor._version)
        return tensor

    def step_inputs(self, seq_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``slot_mapping``, ``block_table`` and ``seq_lens`` of one step, sent to the pool's device
        in one transfer (through a pinned buffer on CUDA)."""
        ids = list(seq_ids)
        slots = self.manager.slot_mapping(ids)
        self._flush_host()
        tensors = self._upload(slots, self.manager.block_table(ids), self.manager.seq_lens(ids))
        self._last_slots = (tensors[0], slots, tensors[0]._version)
        return tensors

    def _host_slots(self, slot_mapping: torch.Tensor) -> np.ndarray:
        """The host copy of ``slot_mapping``: the issued one, a slice of it, or one copied back once
        (then remembered, so the next layers' writes of the same tensor copy nothing)."""
        memo = self._last_slots
        if memo is not None and memo[2] == slot_mapping._version:
            issued, host = memo[0], memo[1]
            if slot_mapping is issued:
                return host
            if (slot_mapping.dim() == 1 and slot_mapping.dtype == torch.int64 and slot_mapping.stride(0) == 1
                    and slot_mapping.untyped_storage().data_ptr() == issued.untyped_storage().data_ptr()):
                start = slot_mapping.storage_offset() - issued.storage_offset()
                if 0 <= start and start + slot_mapping.numel() <= issued.numel():
                    return host[start:start + slot_mapping.numel()]  # a slice of the issued mapping
        copied = self._copied_slots
        if copied is not None and copied[0] is slot_mapping and copied[2] == slot_mapping._version:
            return copied[1]
        if not isinstance(slot_mapping, torch.Tensor) or slot_mapping.dtype != torch.int64 or slot_mapping.dim() != 1:
            raise TypeError("slot_mapping must be a 1-D int64 tensor (from PagedKVCache.slot_mapping)")
        host = slot_mapping.cpu().numpy()
        self._copied_slots = (slot_mapping, host, slot_mapping._version)
        return host

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' K/V of one layer.

        Parameters
        ----------
        layer : int
        slot_mapping : int64 ``[num_tokens]`` from ``slot_mapping``
        k, v : ``[num_tokens, num_kv_heads, head_dim]``, the cache's dtype and device
        """
        if not isinstance(slot_mapping, torch.Tensor):
            raise TypeError("slot_mapping must be a 1-D int64 tensor (from PagedKVCache.slot_mapping)")
        slots = self._host_slots(slot_mapping)
        self.manager.check_write(layer, slots)
        self._flush_host()
        kv_write(self.pool[layer], slot_mapping, k, v, backend=self.config.backend, validate_indices=False)
        self.manager.record_write(layer, slots, checked=True)

    # ------------------------------------------------------------------ tables for kernels
    def block_table(self, seq_ids) -> torch.Tensor:
        """Pages of each sequence, int32 ``[batch, max_pages]`` on the pool's device, padded with
        ``BLOCK_TABLE_PAD`` (-1)."""
        return self._upload(self.manager.block_table(list(seq_ids)))[0]

    def seq_lens(self, seq_ids) -> torch.Tensor:
        """Reserved tokens of each sequence (pending ones included), int32 ``[batch]``."""
        return self._upload(self.manager.seq_lens(list(seq_ids)))[0]

    def page_table_csr(self, seq_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block table in FlashInfer's CSR form, all int32 on the pool's device.

        Returns
        -------
        kv_indptr : ``[batch + 1]``
        kv_indices : ``[kv_indptr[-1]]`` the pages of every sequence, concatenated
        kv_last_page_len : ``[batch]`` tokens in each sequence's last page (1..page_size)
        """
        return self._upload(*self.manager.page_table_csr(list(seq_ids)))

    # ------------------------------------------------------------------ compaction
    def defragment(self, *, order: str = "sequence", shrink: bool | int = False) -> DefragReport:
        """Move live pages together and rewrite block tables and the prefix index.

        Parameters
        ----------
        order : ``"sequence"`` (each sequence's pages consecutive, sequences by id, then cached
            pages) or ``"lowest"`` (only the pages above the live count move, into the holes).
        shrink : False, True (drop every free page after compaction), or a page count to shrink
            to, evicting cached pages in LRU order when there is not room for them all.

        ``get`` reads back bit-identical KV afterwards; cached prefixes still hit.
        """
        if order not in ("sequence", "lowest"):
            raise ValueError(f"order must be 'sequence' or 'lowest', got {order!r}")
        if shrink is not False and shrink is not True and (not isinstance(shrink, int) or shrink < 1):
            raise ValueError(f"shrink must be a bool or a positive page count, got {shrink!r}")
        if shrink is not True and shrink is not False and shrink > self.num_pages:
            raise ValueError(f"shrink to {shrink} pages is larger than the pool ({self.num_pages}); use grow()")
        manager = self.manager
        if manager.in_transaction:
            raise TransactionError("defragment cannot run inside a transaction")
        self._last_slots = self._copied_slots = None  # slot mappings issued before a compaction name old page ids
        before = (manager.num_pages, manager.fragmentation(), self.pool_bytes, manager.allocator.evictions)
        self._flush_host()
        target = None
        if shrink is not False:
            target = manager.shrink_target(None if shrink is True else shrink)
            self._flush_host()  # pages the shrink evicted, before the moves overwrite them
        rounds, old_to_new = manager.plan_compaction(order)
        for moves in rounds:
            src, dst = (torch.tensor(x, dtype=torch.int64, device=self.device) for x in zip(*moves))
            page_move(self.pool, src, dst, backend=self.config.backend, validate_indices=False)
        copies = sum(len(m) for m in rounds)
        moved = manager.apply_compaction(old_to_new, target)
        if target is not None and target != self.pool.shape[1]:
            self._resize_pool(target)
            manager.counters["shrinks"] += 1
        bytes_moved = copies * self.config.page_bytes
        self.bytes_moved += bytes_moved
        return DefragReport(order, moved, bytes_moved, len(rounds), manager.allocator.evictions - before[3],
                            before[0], manager.num_pages, before[1], manager.fragmentation(),
                            before[2], self.pool_bytes)

    def grow(self, num_pages: int) -> None:
        """Enlarge the pool to ``num_pages`` pages (the new ones free)."""
        if num_pages < self.num_pages:
            raise ValueError(f"grow to {num_pages} pages is smaller than the pool ({self.num_pages}); "
                             "use defragment(shrink=...)")
        self.manager.grow(num_pages)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict:
        """Pages free / used / cached, prefix queries and hits in tokens, COW copies, evictions,
        pages and bytes moved, fragmentation, refusals, pool bytes."""
        s = self.manager.stats()
        s.update(bytes_moved=self.bytes_moved, cow_bytes=self.cow_bytes, pool_bytes=self.pool_bytes,
                 page_bytes=self.config.page_bytes)
        if self.host is not None:
            s.update(self.host.stats())
        return s

    def check_invariants(self) -> None:
        """Raise if the bookkeeping is inconsistent (see ``BlockManager.check_invariants``)."""
        self.manager.check_invariants()
        if self.pool.shape[1] != self.manager.num_pages:
            raise AssertionError("pool size and page count disagree")
        if self.host is not None:
            self.host.check_invariants()

    def __contains__(self, seq_id) -> bool:
        return seq_id in self.manager


__all__ = ["PagedKVCache", "DefragReport", "BLOCK_TABLE_PAD", "UnknownSequence"]
