"""Host index: which prefix pages the host tier holds, in which host slot, in LRU order.

Torch-free. Entries are keyed by the same chained page key as the device prefix index, so a prompt
whose device prefix ends at page ``i`` continues its match here with the keys of pages ``i, i+1, ...``.
The stored token bytes are compared on a hit (unless disabled), as on the device.
"""

from collections import OrderedDict


class HostIndex:
    """Page key -> (host slot, token bytes) for at most ``capacity`` pages, least recently used first.

    Parameters
    ----------
    capacity : int
        Host slots (pages) available.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self.free_slots: list[int] = list(range(capacity - 1, -1, -1))
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def match(self, keys: list[bytes], token_bytes: list[bytes], verify: bool) -> list[int]:
        """Host slots of the longest run of ``keys`` held here (``token_bytes[i]``: page i's token
        ids, compared when ``verify``); each hit becomes most recently used."""
        slots = []
        for key, tokens in zip(keys, token_bytes):
            entry = self.entries.get(key)
            if entry is None or (verify and entry[1] != tokens):
                break
            self.entries.move_to_end(key)
            slots.append(entry[0])
        return slots

    def touch(self, key: bytes) -> bool:
        """Make ``key`` most recently used; False when it is not held."""
        if key not in self.entries:
            return False
        self.entries.move_to_end(key)
        return True

    def insert(self, key: bytes, tokens: bytes) -> int:
        """A slot for a new entry (the least recently used entry is dropped when full). The caller
        copies the page's KV into the returned slot. ``key`` must not be held."""
        if self.free_slots:
            slot = self.free_slots.pop()
        else:
            _, (slot, _) = self.entries.popitem(last=False)
            self.evictions += 1
        self.entries[key] = (slot, tokens)
        return slot

    def check_invariants(self) -> None:
        slots = [slot for slot, _ in self.entries.values()] + self.free_slots
        if sorted(slots) != list(range(self.capacity)):
            raise AssertionError("host slots are not each either held by one entry or free")
