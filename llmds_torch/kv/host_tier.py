"""Host tier: published pages evicted from the device pool are kept in host memory and brought back
on a prefix hit.

When the device pool evicts a cached (published) page, its KV is still on the device until the page
is reused. The tier notes the page (``on_evict``) and, before anything writes the pool again
(``flush``, called by the cache ahead of every pool access), copies all pages noted since the last
flush to free host slots in one batched copy; a full host pool drops its least recently used page.

A prompt whose device prefix ends where the host holds the next pages is ``promote``-d before it is
attached: device pages are allocated for those host pages, published under their keys and left
cached, so the attach that follows hits them like any device page. Their KV is staged from the host
pool at once and copied to the device at the next ``flush``: one batched copy per step for all the
promotions of the step (on CUDA on a side stream the current stream then waits for; on CPU a plain
copy). Host entries stay after a promotion (the host is inclusive), so a page evicted again costs no
second copy.

Host pool layout: ``[num_layers, host_pages, 2, page_size, num_kv_heads, head_dim]`` on the CPU,
pinned when the device pool is on CUDA.
"""

import numpy as np
import torch

from llmds_torch.kv.allocator import CACHED
from llmds_torch.kv.host_index import HostIndex


class HostTier:
    """The host pool, its index, and the pages waiting to move either way.

    Parameters
    ----------
    config : KVCacheConfig
        ``host_pages`` > 0; the shape, dtype and device of the device pool.
    manager : BlockManager
        The device pool's block manager (the tier listens to its evictions).
    """

    def __init__(self, config, manager):
        self.config = config
        self.manager = manager
        self.index = HostIndex(config.host_pages)
        cuda = config.torch_device.type == "cuda"
        self.pool = torch.empty((config.num_layers, config.host_pages, 2, config.page_size, config.num_kv_heads,
                                 config.head_dim), dtype=config.dtype, device="cpu", pin_memory=cuda)
        self.stream = torch.cuda.Stream(config.torch_device) if cuda else None
        self._in_flight = None  # (event, staged host tensor) of the last side-stream copy
        self.to_save: dict[int, tuple[bytes, bytes]] = {}  # device page -> (key, token bytes), evicted, KV still there
        self.to_load: dict[int, torch.Tensor] = {}  # device page -> staged KV [L, 2, P, H, D] from the host
        self.counters = dict(host_hits=0, host_hit_tokens=0, host_saves=0, bytes_to_host=0, bytes_to_device=0)
        manager.evict_listener = self.on_evict

    # ------------------------------------------------------------------ device -> host
    def on_evict(self, page: int) -> None:
        """The device pool evicts cached ``page`` (its index entry is still there)."""
        if self.to_load.pop(page, None) is not None:
            return  # promoted but never loaded: nothing on the device to keep
        index = self.manager.index
        key = index.key_of.get(page)
        if key is None or self.index.touch(key):
            return
        self.to_save[page] = (key, index.tokens_of[page])

    def _save(self, device_pool: torch.Tensor) -> None:
        noted, self.to_save = list(self.to_save.items()), {}
        pages, slots, seen = [], [], set()
        for page, (key, tokens) in noted[-self.index.capacity:]:  # the most recent fit
            if key in seen or self.index.touch(key):
                continue
            seen.add(key)
            pages.append(page)
            slots.append(self.index.insert(key, tokens))
        if not pages:
            return
        src = torch.tensor(pages, dtype=torch.int64, device=device_pool.device)
        kv = device_pool.index_select(1, src).to("cpu")  # [L, k, 2, P, H, D]
        self.pool.index_copy_(1, torch.tensor(slots, dtype=torch.int64), kv)
        self.counters["host_saves"] += len(pages)
        self.counters["bytes_to_host"] += len(pages) * self.config.page_bytes

    # ------------------------------------------------------------------ host -> device
    def promote(self, device_pool: torch.Tensor, token_ids, salt=None, extra_key=None) -> int:
        """Bring the pages of this prompt's prefix that follow its device prefix back from the host
        (as far as the host holds them and the device pool has room without evicting the device
        prefix). Pages evicted since the last flush are saved first, so they can hit too. Changes
        no page when ``attach`` of the prompt would be refused. Returns pages promoted; their KV
        reaches the device at the next ``flush``."""
        m, page_size = self.manager, self.config.page_size
        if self.to_save:
            self._save(device_pool)
        if not len(self.index):
            return 0
        token_bytes = m._prompt_bytes(token_ids)
        salt_block = m.prefix.salt_block(salt, extra_key)
        hits, keys, _ = m.prefix.match(token_bytes, salt_block)
        start, usable = len(hits), (len(token_bytes) // 4 - 1) // page_size
        if start >= usable:
            return 0
        if keys[start] not in self.index or not m.can_attach(token_ids, salt=salt, extra_key=extra_key):
            return 0  # nothing to bring back, or the attach will be refused: change nothing
        step = 4 * page_size
        page_tokens = [token_bytes[i * step:(i + 1) * step] for i in range(start, usable)]
        slots = self.index.match(keys[start:usable], page_tokens, m.verify_tokens)
        if not slots:
            return 0
        a = m.allocator
        hit_arr = np.asarray(hits, dtype=np.int64)
        protected = int(np.count_nonzero((a.state[hit_arr] == CACHED) & (a.pins[hit_arr] == 0))) if hits else 0
        slots = slots[:max(0, m.available_pages() - protected)]
        if not slots:
            return 0
        staged = self.pool.index_select(1, torch.tensor(slots, dtype=torch.int64))  # [L, k, 2, P, H, D]
        a.incref_many(hits)  # the allocation below must not evict the device prefix
        try:
            pages = m._allocate(len(slots))
        finally:
            a.release(hit_arr)
        rows = (np.asarray(pages, dtype=np.int64)[:, None] * page_size + np.arange(page_size)).ravel()
        m.writes.mark_all(rows)
        txn = m._txn
        for j, page in enumerate(pages):
            i = start + j
            if m.index.publish(keys[i], page, page_tokens[j], keys[i - 1] if i else b"", salt_block):
                a.published[page] = True
                if txn is not None:
                    txn.published_pages.append(page)
                self.to_load[page] = staged[:, j]
        a.release(np.asarray(pages, dtype=np.int64))  # cached (published) or free again
        self.counters["host_hits"] += len(pages)
        self.counters["host_hit_tokens"] += len(pages) * page_size
        return len(pages)

    def _load(self, device_pool: torch.Tensor) -> None:
        loads, self.to_load = self.to_load, {}
        dst = torch.tensor(list(loads), dtype=torch.int64, device=device_pool.device)
        kv = torch.stack(list(loads.values()), dim=1)  # [L, k, 2, P, H, D]
        if self.stream is None:
            device_pool.index_copy_(1, dst, kv)
        else:
            if self._in_flight is not None:
                self._in_flight[0].synchronize()
            kv = kv.pin_memory()
            current = torch.cuda.current_stream(device_pool.device)
            self.stream.wait_stream(current)  # earlier work on these pages comes first
            with torch.cuda.stream(self.stream):
                device_pool.index_copy_(1, dst, kv.to(device_pool.device, non_blocking=True))
                event = torch.cuda.Event()
                event.record(self.stream)
            current.wait_stream(self.stream)  # what the step runs next reads them
            self._in_flight = (event, kv)
        self.counters["bytes_to_device"] += len(loads) * self.config.page_bytes

    # ------------------------------------------------------------------ both ways
    def flush(self, device_pool: torch.Tensor) -> None:
        """Copy the pages evicted since the last flush to the host, then the promoted pages to the
        device (a page may be both: evicted, then reused for a promotion)."""
        if self.to_save:
            self._save(device_pool)
        if self.to_load:
            self._load(device_pool)

    def pending(self) -> tuple[set[int], set[int], int, int]:
        """The pages waiting to be saved and loaded, and the hit counters (when a transaction starts)."""
        return set(self.to_save), set(self.to_load), self.counters["host_hits"], self.counters["host_hit_tokens"]

    def forget_since(self, pending: tuple[set[int], set[int], int, int]) -> None:
        """After a rollback: drop the copies noted since ``pending()`` was taken (a page evicted inside
        may hold KV written inside, in a pool the rollback dropped; a promoted page is free again)
        and restore the hit counters. Host entries saved inside stay, as evicted pages stay evicted."""
        saves_before, loads_before, self.counters["host_hits"], self.counters["host_hit_tokens"] = pending
        self.to_save = {p: entry for p, entry in self.to_save.items() if p in saves_before}
        self.to_load = {p: kv for p, kv in self.to_load.items() if p in loads_before}

    def stats(self) -> dict:
        return dict(host_pages=self.index.capacity, host_pages_used=len(self.index),
                    host_evictions=self.index.evictions, **self.counters)

    def check_invariants(self) -> None:
        self.index.check_invariants()
        a = self.manager.allocator
        for page in self.to_load:
            if not a.published[page]:
                raise AssertionError(f"page {page} waits for its KV from the host but is not published")
