"""Sampling: greedy, temperature, top-k, top-p against plain-loop definitions; seeds; bad params."""

import pytest
import torch

from llmds_torch.errors import ConfigError, LLMDSError
from llmds_torch.models.sampling import (InvalidStopTokens, SamplingParams, filter_logits, sample_tokens,
                                         token_logprobs)


def _logits(batch=3, vocab=50, seed=0):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = _logits()
    assert torch.equal(sample_tokens(logits, SamplingParams(), None), logits.argmax(-1))
    tied = torch.tensor([[0.5, 3.0, 1.0, 3.0]])
    assert sample_tokens(tied, SamplingParams(), None).tolist() == [1]


def _top_p_keep_loop(probs_row: list[float], top_p: float) -> set[int]:
    order = sorted(range(len(probs_row)), key=lambda i: (-probs_row[i], i))
    keep, total = set(), 0.0
    for i in order:
        keep.add(i)
        total += probs_row[i]
        if total >= top_p:
            break
    return keep


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p):
    logits = _logits(batch=4, vocab=40, seed=1)
    params = SamplingParams(temperature=0.7, top_p=top_p)
    kept = filter_logits(logits, params).isfinite()
    probs = (logits / 0.7).softmax(-1)
    for row in range(4):
        assert set(kept[row].nonzero().flatten().tolist()) == _top_p_keep_loop(probs[row].tolist(), top_p)


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_keeps_k_most_likely(top_k):
    logits = _logits(batch=4, vocab=40, seed=2)
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=top_k)).isfinite()
    for row in range(4):
        best = sorted(range(40), key=lambda i: -float(logits[row, i]))[:top_k]
        assert set(kept[row].nonzero().flatten().tolist()) == set(best)


def test_top_k_one_is_greedy():
    logits = _logits(batch=8, seed=3)
    gen = torch.Generator().manual_seed(0)
    out = sample_tokens(logits, SamplingParams(temperature=1.5, top_k=1), gen)
    assert torch.equal(out, logits.argmax(-1))


def test_temperature_sampling_follows_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    params = SamplingParams(temperature=2.0)
    draws = sample_tokens(logits, params, torch.Generator().manual_seed(4))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    expect = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0]) / 2.0, dim=0)
    torch.testing.assert_close(freq, expect, atol=0.015, rtol=0)


def test_sampling_with_top_p_never_leaves_the_nucleus():
    logits = _logits(batch=1, vocab=30, seed=5).repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_p=0.6)
    draws = set(sample_tokens(logits, params, torch.Generator().manual_seed(6)).tolist())
    nucleus = _top_p_keep_loop(logits[0].softmax(-1).tolist(), 0.6)
    assert draws <= nucleus and len(draws) == len(nucleus)


def test_same_seed_same_tokens():
    logits = _logits(batch=16, vocab=100, seed=7)
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=11)
    a = sample_tokens(logits, params, params.make_generator())
    b = sample_tokens(logits, params, params.make_generator())
    c = sample_tokens(logits, params, SamplingParams(temperature=1.0, seed=12).make_generator())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_token_logprobs_normalize():
    lp = token_logprobs(_logits())
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3))


@pytest.mark.parametrize("stops", ["</s>", [2, "eos"], [1.0], 7, [True], [b"x"], [-3]])
def test_unknown_stop_token_types_are_named(stops):
    with pytest.raises(InvalidStopTokens) as info:
        SamplingParams(stop_token_ids=stops)
    assert isinstance(info.value, LLMDSError) and isinstance(info.value, TypeError)


def test_stop_tokens_become_a_tuple():
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)


@pytest.mark.parametrize("kwargs", [
    dict(max_new_tokens=0), dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0),
    dict(top_p=1.5), dict(top_k=-1), dict(n=0), dict(beam_width=2, n=2),
    dict(beam_width=2, temperature=0.5), dict(seed="x"), dict(length_penalty=float("inf")),
])
def test_bad_sampling_params(kwargs):
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 1e-300, 1e300])
def test_extreme_temperatures_sample_finite_distributions(temperature):
    """Shifted by the row maximum before dividing, no temperature overflows; tiny ones are greedy."""
    logits = _logits(batch=4, vocab=30, seed=7)
    params = SamplingParams(temperature=temperature, top_p=0.9)
    filtered = filter_logits(logits, params)
    assert not filtered.isnan().any() and (filtered.amax(-1) == 0).all()
    tokens = sample_tokens(logits, params, torch.Generator().manual_seed(0))
    if temperature < 1e-30:
        assert torch.equal(tokens, logits.argmax(-1))
