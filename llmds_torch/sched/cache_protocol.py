"""The part of a KV cache the scheduler uses. ``llmds_torch.kv.BlockManager`` (torch-free) and
``llmds_torch.kv.PagedKVCache`` both satisfy it; a test may pass any object that does."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable


@runtime_checkable
class CacheProtocol(Protocol):
    """Predicates paired with actions, plus sizes and limits.

    ``can_attach`` / ``can_append`` must answer exactly whether ``attach`` / ``append`` /
    ``append_batch`` would succeed right now; the scheduler acts only after asking. Inside
    ``with cache.transaction():`` every change is undone if the block raises.
    """

    @property
    def page_size(self) -> int: ...

    @property
    def num_pages(self) -> int: ...

    @property
    def max_num_pages(self) -> int:
        """The most pages the pool may ever hold."""

    @property
    def max_context_len(self) -> int | None:
        """The longest sequence the cache accepts (None: no limit but the pool)."""

    def transaction(self) -> AbstractContextManager[None]: ...

    def pending_prefix_tokens(self, token_ids, *, salt=None, extra_key=None) -> int: ...

    def can_attach(self, token_ids, *, salt=None) -> bool: ...

    def attach(self, token_ids, *, salt=None) -> int: ...

    def can_append(self, seq_ids, num_tokens: int = 1) -> bool: ...

    def append(self, seq_id: int, token_ids) -> None: ...

    def append_batch(self, seq_ids: Sequence[int], token_ids) -> None: ...

    def detach(self, seq_id: int) -> None: ...

    def num_cached_tokens(self, seq_id: int) -> int: ...

    def num_tokens(self, seq_id: int) -> int: ...

    def stats(self) -> dict: ...
