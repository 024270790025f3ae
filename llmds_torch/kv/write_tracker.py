"""Which layers have written which slots, at O(1) bookkeeping per layer for a decode step.

A slot counts as written once every layer wrote it; only then may its page be published. The exact
record is a bitmask per slot (one bit per layer, in 64-bit words). Updating it on every layer's
write costs O(batch) per layer, O(batch x layers) per step; so the tracker keeps the slot mapping it
issued last aside (``Issued``) and, while that mapping is what each layer writes, only counts the
layers in one integer. When the last layer wrote, the slots' bits are set in one array operation.
Anything else that reads or changes slot state first calls ``flush``, which folds the layers
counted so far into the bitmask; from then on the exact per-slot path runs. ``checked=True`` (the
debug mode) never takes the shortcut.

The shortcut is exact: a mapping is issued only when none of its slots has been written by any
layer, it names exactly the pending slots of its sequences, and any change to sequences or pages
flushes it before it could go stale.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Issued:
    """A slot mapping handed out by ``slot_mapping``, whose writes are counted per layer."""

    slots: np.ndarray  # int64 [n], the host copy the caller passes back to ``write``
    sequences: list  # the sequences it covers, in batch order
    covers_all: bool  # every pending token of each of those sequences is in ``slots``
    rows: np.ndarray | None = None  # block-table rows, when each sequence has exactly one slot (decode)
    layers: int = 0  # bit l set: layer l wrote every slot


class WriteTracker:
    """Per-slot layer bitmask plus the issued-mapping shortcut.

    Parameters
    ----------
    num_slots : int
        ``num_pages * page_size``.
    num_layers : int
        Layers that must write a slot before it counts as written.
    checked : bool
        Debug mode: track every write slot by slot (never count layers against an issued mapping).
    """

    def __init__(self, num_slots: int, num_layers: int, *, checked: bool = False):
        self.num_layers = num_layers
        self.checked = checked
        words = -(-num_layers // 64)
        bits = [min(64, num_layers - 64 * w) for w in range(words)]
        self.all_layers = np.array([(1 << b) - 1 for b in bits], dtype=np.uint64)  # [words]
        self.every_layer = (1 << num_layers) - 1
        self.slot_layers = np.zeros((num_slots, words), dtype=np.uint64)  # [num_slots, words]
        self.issued: Issued | None = None
        self.on_flush = None  # callable(slots) before the bitmask of ``slots`` changes (transactions)

    # ------------------------------------------------------------------ the shortcut
    def issue(self, slots: np.ndarray, sequences: list, covers_all: bool, rows: np.ndarray | None = None) -> None:
        """Remember ``slots`` as the mapping the layers will write, if none of them is written yet
        (``sequences``: distinct, the owners of the slots in batch order)."""
        self.flush()
        if not self.checked and slots.size and not self.slot_layers[slots].any():
            self.issued = Issued(slots, sequences, covers_all, rows)

    def is_issued(self, slots) -> bool:
        issued = self.issued
        return issued is not None and slots is issued.slots

    def check_issued(self, layer: int) -> None:
        if self.issued.layers >> layer & 1:
            raise ValueError(f"layer {layer} already wrote some of these slots")

    def count_layer(self, layer: int) -> Issued | None:
        """Count ``layer`` as written for the issued mapping (``ValueError`` if it already was);
        return the mapping once every layer wrote (its slots are then marked written and the
        shortcut ends)."""
        issued = self.issued
        bit = 1 << layer
        if issued.layers & bit:
            raise ValueError(f"layer {layer} already wrote some of these slots")
        issued.layers |= bit
        if issued.layers != self.every_layer:
            return None
        self.issued = None
        if self.on_flush is not None:
            self.on_flush(issued.slots)
        self.slot_layers[issued.slots] = self.all_layers
        return issued

    def flush(self) -> None:
        """Fold the layers counted for the issued mapping into the bitmask and end the shortcut."""
        issued, self.issued = self.issued, None
        if issued is None or not issued.layers:
            return
        if self.on_flush is not None:
            self.on_flush(issued.slots)
        layers = issued.layers
        words = np.array([(layers >> (64 * w)) & ((1 << 64) - 1) for w in range(self.all_layers.size)],
                         dtype=np.uint64)
        self.slot_layers[issued.slots] |= words

    def forget(self) -> None:
        """Drop the issued mapping and the layers counted for it (a rollback)."""
        self.issued = None

    # ------------------------------------------------------------------ the exact record
    def fully_written(self, slots: np.ndarray) -> np.ndarray:
        """bool ``[len(slots)]``: every layer has written the slot."""
        return (self.slot_layers[slots] == self.all_layers).all(axis=1)

    def wrote(self, layer: int, slots: np.ndarray) -> bool:
        """Whether ``layer`` wrote any of ``slots``."""
        return bool((self.slot_layers[slots, layer // 64] & _bit(layer)).any())

    def record(self, layer: int, slots: np.ndarray) -> None:
        if self.on_flush is not None:
            self.on_flush(slots)
        self.slot_layers[slots, layer // 64] |= _bit(layer)

    def mark_all(self, slots: np.ndarray) -> None:
        if self.on_flush is not None:
            self.on_flush(slots)
        self.slot_layers[slots] = self.all_layers

    def page_rows(self, page_size: int) -> np.ndarray:
        """``slot_layers`` viewed per page: ``[num_pages, page_size, words]``."""
        return self.slot_layers.reshape(-1, page_size, self.slot_layers.shape[1])


def _bit(layer: int) -> np.uint64:
    return np.uint64(1) << np.uint64(layer % 64)
