"""Block tables of all live sequences in one int32 array, so a batch's padded table, its CSR form
and its decode slots are array operations, not per-page Python.

Each sequence owns a row; ``table[row, i]`` is the page holding its positions
``[i * page_size, (i + 1) * page_size)``, cells past its pages hold ``PAD``. Rows and columns grow
geometrically (doubling) and are reused after a sequence is released.
"""

import numpy as np

PAD = -1


class BlockTables:
    """Rows of page ids plus each row's page count.

    Attributes
    ----------
    table : np.ndarray
        int32 ``[capacity_rows, capacity_pages]``.
    num_pages : np.ndarray
        int64 ``[capacity_rows]``: pages in each row.
    num_tokens, num_written : np.ndarray
        int64 ``[capacity_rows]``: each row's sequence's reserved and written tokens.
    """

    def __init__(self, rows: int = 64, width: int = 16):
        self.table = np.full((rows, width), PAD, dtype=np.int32)
        self.num_pages = np.zeros(rows, dtype=np.int64)
        self.num_tokens = np.zeros(rows, dtype=np.int64)
        self.num_written = np.zeros(rows, dtype=np.int64)
        self._free_rows = list(range(rows - 1, -1, -1))

    def new_row(self, pages: list[int], num_tokens: int, num_written: int) -> int:
        if not self._free_rows:
            rows = self.table.shape[0]
            self.table = np.concatenate([self.table, np.full_like(self.table, PAD)])
            for name in ("num_pages", "num_tokens", "num_written"):
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(rows, dtype=np.int64)]))
            self._free_rows = list(range(2 * rows - 1, rows - 1, -1))
        row = self._free_rows.pop()
        self.set(row, pages)
        self.num_tokens[row], self.num_written[row] = num_tokens, num_written
        return row

    def release(self, row: int) -> None:
        self.table[row, :self.num_pages[row]] = PAD
        self.num_pages[row] = 0
        self._free_rows.append(row)

    def fit(self, width: int) -> None:
        """Make room for rows of ``width`` pages."""
        if width > self.table.shape[1]:
            grown = np.full((self.table.shape[0], max(width, 2 * self.table.shape[1])), PAD, dtype=np.int32)
            grown[:, :self.table.shape[1]] = self.table
            self.table = grown

    def set(self, row: int, pages: list[int]) -> None:
        """Row ``row`` holds exactly ``pages``."""
        n, old = len(pages), int(self.num_pages[row])
        self.fit(n)
        self.table[row, :n] = pages
        if old > n:
            self.table[row, n:old] = PAD
        self.num_pages[row] = n

    def extend(self, row: int, pages: list[int]) -> None:
        start = int(self.num_pages[row])
        self.fit(start + len(pages))
        self.table[row, start:start + len(pages)] = pages
        self.num_pages[row] = start + len(pages)

    def push(self, rows: np.ndarray, pages: np.ndarray) -> None:
        """Append one page to each of ``rows`` (distinct): ``pages[i]`` to row ``rows[i]``."""
        cols = self.num_pages[rows]
        self.fit(int(cols.max()) + 1)
        self.table[rows, cols] = pages
        self.num_pages[rows] = cols + 1

    def put(self, row: int, index: int, page: int) -> None:
        self.table[row, index] = page

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """int32 ``[len(rows), max pages]``, padded with ``PAD``."""
        width = int(self.num_pages[rows].max()) if len(rows) else 0
        return self.table[rows, :width]

    def csr(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indptr int32 ``[len(rows) + 1]``, indices int32 ``[indptr[-1]]``)."""
        counts = self.num_pages[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        padded = self.padded(rows)
        return indptr, padded[padded != PAD] if padded.size else np.zeros(0, dtype=np.int32)

    def slots(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray, page_size: int) -> np.ndarray:
        """Slots of positions ``[start[i], end[i])`` of each row, row after row: int64
        ``[sum(end - start)]``, ``slot = page * page_size + position % page_size``."""
        if len(rows) == 1:
            return self.run_slots(int(rows[0]), int(start[0]), int(end[0]), page_size)
        else:
            counts = end - start
            which = np.repeat(np.arange(len(rows)), counts)
            positions = np.arange(which.size, dtype=np.int64) + np.repeat(start - (np.cumsum(counts) - counts), counts)
            pages = self.table[rows[which], positions // page_size]
        return pages.astype(np.int64) * page_size + positions % page_size

    def run_slots(self, row: int, start: int, end: int, page_size: int) -> np.ndarray:
        """``slots`` of one row: its whole pages holding ``[start, end)``, cut to that range."""
        first = start // page_size
        pages = self.table[row, first:-(-end // page_size)].astype(np.int64) * page_size
        skip = start - first * page_size
        return (pages[:, None] + np.arange(page_size)).ravel()[skip:skip + end - start]

    def renumber(self, old_to_new: np.ndarray) -> None:
        """Follow a compaction: every page id ``p`` becomes ``old_to_new[p]``."""
        used = self.table != PAD
        self.table[used] = old_to_new[self.table[used]]
