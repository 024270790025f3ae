"""The HNSW index's storage tensors, declared once.

Each :class:`Field` says a tensor's name, dtype, what its rows count and how wide a row is.
Allocating, growing, saving, loading, checking a file, renumbering slots and measuring memory all
iterate :data:`FIELDS`, so a new tensor is added in one place. Row counts:

- ``"slots"``: one row per slot (``capacity`` allocated, ``n_slots`` used and saved);
- ``"upper"``: one row per (node, level >= 1) list (``upper_capacity`` allocated, ``n_upper_rows``
  used and saved);
- ``"fixed"``: one row in all (the scalar quantiser's per-dimension parameters).

Row widths name a size of the index: ``"dim"``, ``"M0"`` (level-0 links), ``"M"`` (upper links),
or ``None`` for a 1-D tensor. ``names_slots`` marks tensors whose values are slots (``-1`` for
none), renumbered when slots are; ``saved`` is False for what is derived from other fields on load.
``storage`` limits a field to one vector-storage mode (see :mod:`llmds_torch.retrieval.hnsw`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STORAGES = ("float32", "sq8")


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    dtype: np.dtype
    rows: str                 # "slots", "upper" or "fixed"
    width: str | None         # "dim", "M0", "M", or None for a 1-D tensor
    fill: float | int | bool  # value of an unused row
    names_slots: bool = False
    saved: bool = True
    storage: str | None = None  # None: present in every storage mode

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, self.dtype)).dtype

    def shape(self, sizes: dict) -> tuple[int, ...]:
        """The shape for ``sizes`` (``slots``, ``upper``, ``dim``, ``M0``, ``M``)."""
        rows = () if self.rows == "fixed" else (sizes[self.rows],)
        return rows + (() if self.width is None else (sizes[self.width],))


FIELDS = (
    Field("vectors", np.dtype(np.float32), "slots", "dim", 0.0),            # exact vectors (cosine: normalized)
    Field("codes", np.dtype(np.uint8), "slots", "dim", 0, saved=False, storage="sq8"),  # 8-bit codes of vectors
    Field("sq_low", np.dtype(np.float32), "fixed", "dim", 0.0, storage="sq8"),    # per-dimension minimum
    Field("sq_high", np.dtype(np.float32), "fixed", "dim", 0.0, storage="sq8"),   # per-dimension maximum
    Field("links0", np.dtype(np.int32), "slots", "M0", -1, names_slots=True),     # level-0 neighbours
    Field("upper_links", np.dtype(np.int32), "upper", "M", -1, names_slots=True),  # one row per (node, level >= 1)
    Field("upper_offset", np.dtype(np.int64), "slots", None, -1),     # row of the node's level-1 list
    Field("upper_rows", np.dtype(np.int32), "slots", None, 0),        # upper rows allotted to the slot
    Field("levels", np.dtype(np.int32), "slots", None, -1),           # top level; -1 for a free slot
    Field("ids", np.dtype(np.int64), "slots", None, -1),              # external id; -1 for a free slot
    Field("live", np.dtype(np.bool_), "slots", None, False),
)


def fields_for(storage: str) -> tuple[Field, ...]:
    """The fields an index with vector storage ``storage`` holds."""
    return tuple(f for f in FIELDS if f.storage in (None, storage))


def allocate(fields, sizes: dict) -> dict[str, torch.Tensor]:
    """Fresh tensors, every row unused (filled with the field's ``fill``)."""
    return {f.name: torch.full(f.shape(sizes), f.fill, dtype=f.torch_dtype) for f in fields}


def used(fields, tensors: dict, n_slots: int, n_upper_rows: int) -> dict[str, torch.Tensor]:
    """Views of the used rows of each tensor."""
    count = {"slots": n_slots, "upper": n_upper_rows}
    return {f.name: tensors[f.name] if f.rows == "fixed" else tensors[f.name][: count[f.rows]] for f in fields}


def renumber(fields, tensors: dict, order: np.ndarray) -> None:
    """Move slot ``order[i]`` to slot ``i``, in place, for ``i < len(order)``.

    ``order`` int64 ``[n_slots]`` is a permutation of the used slots. Per-slot rows move; values
    that name slots (``names_slots``) are rewritten to the new numbers; upper rows stay where they
    are (``upper_offset`` moves with its slot).
    """
    n = order.shape[0]
    new_of_old = np.empty(n + 1, np.int64)  # index n + (-1) == n maps "no slot" to -1
    new_of_old[order] = np.arange(n)
    new_of_old[n] = -1
    take = torch.from_numpy(order)
    remap = torch.from_numpy(new_of_old)
    for f in fields:
        t = tensors[f.name]
        if f.rows == "slots":
            t[:n] = t[:n][take]
        if f.names_slots:
            used_rows = t[:n] if f.rows == "slots" else t
            used_rows.copy_(remap[used_rows.long()].to(t.dtype))


__all__ = ["FIELDS", "STORAGES", "Field", "allocate", "fields_for", "renumber", "used"]
