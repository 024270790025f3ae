"""Token budget: KV tokens, prompt tokens admitted per step, and each sequence's context window."""

from dataclasses import dataclass

from llmds_torch.errors import BudgetExceeded, ConfigError


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """Limits a scheduler checks before admitting work.

    Parameters
    ----------
    kv_tokens : int
        KV slots of the whole cache (``num_pages * page_size``).
    max_prefill_tokens_per_step : int
        Prompt tokens that one step may compute (chunked prefill splits longer prompts).
    max_context_len : int
        Longest sequence (prompt + generated tokens).
    """

    kv_tokens: int
    max_prefill_tokens_per_step: int
    max_context_len: int

    def __post_init__(self):
        for name in ("kv_tokens", "max_prefill_tokens_per_step", "max_context_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_cache(cls, cache, max_prefill_tokens_per_step: int = 2048, max_context_len: int | None = None):
        """The budget of a ``PagedKVCache`` or ``BlockManager`` (its largest allowed size)."""
        manager = getattr(cache, "manager", cache)
        kv_tokens = manager.max_num_pages * manager.page_size
        context = max_context_len or manager.max_context_len or kv_tokens
        return cls(kv_tokens, max_prefill_tokens_per_step, min(context, kv_tokens))

    def why_never_fits(self, prompt_len: int, max_new_tokens: int) -> str | None:
        """The reason a request can never run under this budget, or None if it can."""
        if prompt_len < 1 or max_new_tokens < 0:
            return f"prompt_len must be >= 1 and max_new_tokens >= 0, got {prompt_len} and {max_new_tokens}"
        total = prompt_len + max_new_tokens
        if total > self.kv_tokens:
            return (f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} tokens of KV exceed "
                    f"the whole cache ({self.kv_tokens} tokens)")
        if total > self.max_context_len:
            return (f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} tokens exceeds the "
                    f"context window of {self.max_context_len}")
        return None

    def check(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise ``BudgetExceeded`` with the reason if the request can never fit."""
        reason = self.why_never_fits(prompt_len, max_new_tokens)
        if reason is not None:
            raise BudgetExceeded(reason)

    def prefill_chunk(self, remaining_prompt: int, used_this_step: int) -> int:
        """Prompt tokens a request may compute this step, given tokens already granted this step."""
        return max(0, min(remaining_prompt, self.max_prefill_tokens_per_step - used_this_step))
