"""Eviction policies for cached pages (refcount 0, still holding a published prefix).

A policy only orders page ids; the allocator decides when to evict. Pinned pages are never handed
to the policy, so they are never evicted.
"""

from collections import OrderedDict
from typing import Iterator, Protocol


class EvictionPolicy(Protocol):
    """What the allocator needs from an eviction policy."""

    def insert(self, page: int) -> None:
        """A page became evictable (most recently used)."""

    def remove(self, page: int) -> None:
        """A page stopped being evictable (reused by a prefix hit, pinned, or moved)."""

    def victim(self) -> int:
        """Remove and return the page to evict next."""

    def __len__(self) -> int: ...

    def __contains__(self, page: int) -> bool: ...

    def __iter__(self) -> Iterator[int]:
        """Pages in eviction order, first victim first, without changing anything."""


class LRUPolicy:
    """Least recently released page is evicted first."""

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def insert(self, page: int) -> None:
        self._order[page] = None
        self._order.move_to_end(page)

    def insert_new(self, pages: list[int]) -> None:
        """``insert`` of each page in order, none of them evictable yet."""
        order = self._order
        for page in pages:
            order[page] = None

    def remove(self, page: int) -> None:
        del self._order[page]

    def victim(self) -> int:
        page, _ = self._order.popitem(last=False)
        return page

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, page: int) -> bool:
        return page in self._order

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._order))


class FIFOPolicy(LRUPolicy):
    """First page ever made evictable is evicted first; later releases do not refresh it."""

    def insert(self, page: int) -> None:
        self._order.setdefault(page, None)


POLICIES = {"lru": LRUPolicy, "fifo": FIFOPolicy}


def make_policy(policy) -> EvictionPolicy:
    """A policy from its name (``"lru"``, ``"fifo"``), a class, or an instance."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"eviction_policy must be one of {sorted(POLICIES)} or a policy object, got {policy!r}")
        return POLICIES[policy]()
    if isinstance(policy, type):
        return policy()
    return policy
