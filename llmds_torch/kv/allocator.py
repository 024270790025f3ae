"""Page allocator: free list, reference counts, and the free / in-use / cached page states.

Torch-free. Allocation and release are O(1) per page: the free list is a stack (lowest ids on top
at start, so a fresh pool fills from page 0), cached pages live in an eviction policy.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from llmds_torch.errors import OutOfPages
from llmds_torch.kv.eviction import EvictionPolicy
from llmds_torch.kv.page_release import release_buffer, release_pages

FREE, USED, CACHED = 0, 1, 2
STATE_NAMES = {FREE: "free", USED: "in use", CACHED: "cached"}


@dataclass(slots=True)
class Journal:
    """The free list and eviction order at the start of a transaction, saved lazily: free-list
    entries only as pops reach below the part never touched since (``low``), the eviction order
    only before its first change."""

    low: int  # free_list[:low] is unchanged since the start
    below: list[int]  # what stood at free_list[low:start length] at the start
    free_list: list[int] | None = None  # the whole start list, once a growth shifted the entries
    policy_order: list[int] | None = None


class PageAllocator:
    """Owns page states, reference counts, pins, the free list and the eviction policy.

    Parameters
    ----------
    num_pages : int
        Pages in the pool.
    policy : EvictionPolicy
        Orders cached pages for eviction.
    on_evict : callable(page) -> None
        Called when a cached page is evicted (the prefix index forgets it).
    """

    def __init__(self, num_pages: int, policy: EvictionPolicy, on_evict: Callable[[int], None]):
        self.num_pages = num_pages
        self.state = np.zeros(num_pages, dtype=np.int8)  # [num_pages]
        self.refcount = np.zeros(num_pages, dtype=np.int32)  # [num_pages]
        self.published = np.zeros(num_pages, dtype=bool)  # [num_pages]: holds an indexed prefix page
        self.pins = np.zeros(num_pages, dtype=np.int32)  # [num_pages]
        self.free_list: list[int] = list(range(num_pages - 1, -1, -1))
        self.policy = policy
        self.on_evict = on_evict
        self.evictions = 0
        self.journal: Journal | None = None
        self._release_out: np.ndarray | None = None  # scratch of ``release``

    # -- journal (transactions) -------------------------------------------------------------
    def start_journal(self) -> None:
        self.journal = Journal(len(self.free_list), [])

    def end_journal(self) -> tuple[list[int], list[int] | None]:
        """The free list and the eviction order (None: unchanged) at ``start_journal``."""
        j, self.journal = self.journal, None
        if j.free_list is not None:
            return j.free_list, j.policy_order
        return self.free_list[:j.low] + j.below, j.policy_order

    def _before_pop(self, new_len: int) -> None:
        j = self.journal
        if j is not None and j.free_list is None and new_len < j.low:
            j.below[:0] = self.free_list[new_len:j.low]
            j.low = new_len

    def _before_policy_change(self) -> None:
        j = self.journal
        if j is not None and j.policy_order is None:
            j.policy_order = list(self.policy)

    # -- capacity ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_list)

    @property
    def num_evictable(self) -> int:
        return len(self.policy)

    def available(self) -> int:
        """Pages an allocation can obtain right now (free plus evictable)."""
        return len(self.free_list) + len(self.policy)

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))

    # -- allocate / reference ---------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` pages (refcount 1), evicting cached pages in policy order when the free list
        runs dry. Raises ``OutOfPages`` and changes nothing when fewer than ``n`` are obtainable."""
        if n > self.available():
            raise OutOfPages(f"need {n} pages, only {len(self.free_list)} free + {len(self.policy)} "
                             f"evictable of {self.num_pages}")
        self._before_pop(max(0, len(self.free_list) - n))
        if n > len(self.free_list):
            self._before_policy_change()
        if 0 < n <= len(self.free_list):  # from the free list alone: array operations
            pages = self.free_list[-n:]
            del self.free_list[-n:]
            pages.reverse()
            taken = np.array(pages)
            self.state[taken] = USED
            self.refcount[taken] = 1
            return pages
        pages = []
        for _ in range(n):
            if self.free_list:
                page = self.free_list.pop()
            else:
                page = self.policy.victim()
                self.published[page] = False
                self.evictions += 1
                self.on_evict(page)
            self.state[page] = USED
            self.refcount[page] = 1
            pages.append(page)
        return pages

    def incref_many(self, pages: list[int]) -> None:
        """``incref`` of distinct pages at once."""
        if not pages:
            return
        arr = np.asarray(pages, dtype=np.int64)
        was_cached = self.state[arr] == CACHED
        if np.count_nonzero(was_cached):
            self._before_policy_change()
            for page in arr[was_cached].tolist():
                if page in self.policy:
                    self.policy.remove(page)
        self.state[arr] = USED
        self.refcount[arr] += 1

    def incref(self, page: int) -> None:
        """One more block-table reference; a cached page comes back into use."""
        if self.state[page] == CACHED:
            if page in self.policy:
                self._before_policy_change()
                self.policy.remove(page)
            self.state[page] = USED
        self.refcount[page] += 1

    def release(self, pages: Iterable[int]) -> None:
        """Drop one reference from each page (distinct pages), in the given order. A page reaching
        refcount 0 becomes cached when it holds a published prefix, otherwise free. One compiled
        loop over the pages; then the free list and the eviction policy take theirs in one call each."""
        pages = pages if isinstance(pages, np.ndarray) else np.fromiter(pages, dtype=np.int64)
        n = pages.shape[0]
        if not n:
            return
        self._release_out = out = release_buffer(n, self._release_out)
        num_free, num_cached, num_evictable = release_pages(pages, self.refcount, self.state, self.published,
                                                            self.pins, FREE, CACHED, out)
        if num_free:
            self.free_list.extend(out[:num_free].tolist())
        if num_cached:
            self._before_policy_change()
        if num_evictable:
            evictable = out[n:n + num_evictable].tolist()
            insert_new = getattr(self.policy, "insert_new", None)
            if insert_new is not None:  # the built-in policies take them in one call
                insert_new(evictable)
            else:
                for page in evictable:
                    self.policy.insert(page)

    # -- pins -------------------------------------------------------------------------------
    def pin(self, page: int) -> None:
        if self.pins[page] == 0 and page in self.policy:
            self._before_policy_change()
            self.policy.remove(page)
        self.pins[page] += 1

    def unpin(self, page: int) -> None:
        self.pins[page] -= 1
        if self.pins[page] == 0 and self.state[page] == CACHED:
            self._before_policy_change()
            self.policy.insert(page)

    # -- evict explicitly (shrink) -----------------------------------------------------------
    def evict(self, n: int) -> list[int]:
        """Evict ``n`` cached pages in policy order; they become free. Returns them."""
        if n > len(self.policy):
            raise OutOfPages(f"asked to evict {n} pages, only {len(self.policy)} are evictable")
        if n:
            self._before_policy_change()
        pages = []
        for _ in range(n):
            page = self.policy.victim()
            self.published[page] = False
            self.state[page] = FREE
            self.free_list.append(page)
            self.evictions += 1
            self.on_evict(page)
            pages.append(page)
        return pages

    # -- resize and renumber ----------------------------------------------------------------
    def grow(self, new_num_pages: int) -> None:
        """Add pages ``[num_pages, new_num_pages)`` as free."""
        extra = new_num_pages - self.num_pages
        self.state = np.concatenate([self.state, np.zeros(extra, np.int8)])
        self.refcount = np.concatenate([self.refcount, np.zeros(extra, np.int32)])
        self.published = np.concatenate([self.published, np.zeros(extra, bool)])
        self.pins = np.concatenate([self.pins, np.zeros(extra, np.int32)])
        j = self.journal
        if j is not None and j.free_list is None:  # the entries shift: keep the start list whole
            j.free_list = self.free_list[:j.low] + j.below
        # New ids go under the old free ones so the lowest free ids are still used first.
        self.free_list[:0] = range(new_num_pages - 1, self.num_pages - 1, -1)
        self.num_pages = new_num_pages

    def renumber(self, old_to_new: np.ndarray, new_num_pages: int) -> None:
        """Apply a page permutation after compaction.

        ``old_to_new`` is int64 ``[num_pages]``: the new id of every non-free page (-1 for free).
        Every page with id ``>= new_num_pages`` must be free.
        """
        live = np.flatnonzero(old_to_new >= 0)
        new_ids = old_to_new[live]
        cached_order = [int(old_to_new[p]) for p in self.policy]
        fields = {}
        for name in ("state", "refcount", "published", "pins"):
            old = getattr(self, name)
            new = np.zeros(new_num_pages, dtype=old.dtype)
            new[new_ids] = old[live]
            fields[name] = new
        self.state, self.refcount, self.published, self.pins = (fields[k] for k in ("state", "refcount", "published", "pins"))
        self.num_pages = new_num_pages
        self.free_list = [int(p) for p in np.flatnonzero(self.state == FREE)[::-1]]
        while len(self.policy):
            self.policy.victim()
        for page in cached_order:
            self.policy.insert(page)
