import pytest

from llmds_torch.errors import BudgetExceeded, ConfigError
from llmds_torch.kv import BlockManager, TokenBudget


def test_request_that_can_never_fit_is_refused_with_the_reason():
    budget = TokenBudget(kv_tokens=1024, max_prefill_tokens_per_step=256, max_context_len=512)
    budget.check(100, 400)
    with pytest.raises(BudgetExceeded, match="context window of 512"):
        budget.check(500, 13)
    wide = TokenBudget(kv_tokens=256, max_prefill_tokens_per_step=64, max_context_len=4096)
    with pytest.raises(BudgetExceeded, match="whole cache"):
        wide.check(200, 100)
    assert budget.why_never_fits(0, 1) is not None


def test_prefill_chunks_respect_the_per_step_budget():
    budget = TokenBudget(kv_tokens=1024, max_prefill_tokens_per_step=100, max_context_len=1024)
    assert budget.prefill_chunk(300, 0) == 100
    assert budget.prefill_chunk(300, 70) == 30
    assert budget.prefill_chunk(20, 70) == 20
    assert budget.prefill_chunk(20, 100) == 0


def test_budget_of_a_cache_counts_its_largest_size():
    manager = BlockManager(8, 16, max_num_pages=32, max_context_len=300)
    budget = TokenBudget.for_cache(manager, max_prefill_tokens_per_step=64)
    assert budget.kv_tokens == 512 and budget.max_context_len == 300


def test_nonsense_budget_is_refused():
    with pytest.raises(ConfigError):
        TokenBudget(kv_tokens=0, max_prefill_tokens_per_step=1, max_context_len=1)
