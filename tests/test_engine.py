"""The generation engine against no-cache oracles: every token and logit of paged generation
(prefix hits, forks, copy-on-write, evictions, defragmentation, chunked prefill, preemption) must
equal a dense recompute of the same sequence."""

import math

import pytest
import torch

from llmds_torch.errors import BudgetExceeded, ConfigError, ContextWindowExceeded, InvalidTokenIds
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, EngineError, GenerationEngine, RequestTooLarge
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import InvalidStopTokens, SamplingParams, sample_tokens

CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=128)


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CFG, seed=3)


def _cache(num_pages=64, page_size=4, **kw):
    """A cache whose pool starts as NaN, so reading any slot that was never written poisons the
    logits (an empty pool holds whatever memory held before, which hides such reads by chance)."""
    cache = PagedKVCache(KVCacheConfig(num_layers=CFG.num_layers, num_kv_heads=CFG.num_kv_heads,
                                       head_dim=CFG.head_dim, page_size=page_size, num_pages=num_pages,
                                       dtype=torch.float32, device="cpu", **kw))
    cache.pool.fill_(float("nan"))
    return cache


def _tokens(n, seed):
    return torch.randint(0, CFG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---------------------------------------------------------------------------- oracles

def _check_against_recompute(model, prompt, output):
    """Every generated token is the greedy choice of a full recompute, logits within 1e-4."""
    seq = prompt + output.token_ids
    full = model.forward_full(seq)[len(prompt) - 1: len(seq) - 1]  # [num_generated, vocab]
    torch.testing.assert_close(output.logits, full, rtol=0, atol=1e-4)
    assert output.token_ids == full.argmax(-1).tolist()


def _greedy_no_cache(model, prompt, max_new, stops=()):
    out = []
    while len(out) < max_new:
        out.append(int(model.forward_full(prompt + out)[-1].argmax()))
        if out[-1] in stops:
            break
    return out


def _sample_no_cache(model, prompt, params):
    """Parallel sampling replayed with full recomputes, drawing from the generator in the same
    order as the engine: one call per step over the live samples."""
    gen = params.make_generator()
    seqs = [[] for _ in range(params.n)]
    live = list(range(params.n))
    rows = model.forward_full(prompt)[-1:].expand(params.n, -1)
    while live:
        for i, tok in zip(live, sample_tokens(rows, params, gen).tolist()):
            seqs[i].append(tok)
        live = [i for i in live if seqs[i][-1] not in params.stop_token_ids and len(seqs[i]) < params.max_new_tokens]
        if live:
            rows = torch.stack([model.forward_full(prompt + seqs[i])[-1] for i in live])
    return seqs


def _beam_no_cache(model, prompt, width, max_new, stops=(), length_penalty=1.0):
    """Beam search written out with Python lists and full recomputes."""
    beams = [([], 0.0)]
    done = []
    for step in range(max_new):
        cands = []
        for bi, (toks, score) in enumerate(beams):
            lp = torch.log_softmax(model.forward_full(prompt + toks)[-1].float(), -1).tolist()
            cands += [(score + lp[t], bi, t) for t in range(len(lp))]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        nxt = []
        for rank, (score, bi, t) in enumerate(cands[: 2 * width]):
            toks = beams[bi][0] + [t]
            if t in stops:
                if rank < width:
                    done.append((toks, score))
                continue
            nxt.append((toks, score))
            if len(nxt) == width:
                break
        beams = nxt
        if len(done) >= width:
            break
        if step == max_new - 1:
            done += beams
    ranked = sorted(done, key=lambda d: -d[1] / len(d[0]) ** length_penalty)
    return ranked[:width]


# ---------------------------------------------------------------------------- exactness

def _greedy_run_with_defrag(model, order):
    # 24 pages of 4 tokens: too few to keep every finished prefix, so cached pages get evicted
    cache = _cache(num_pages=24, page_size=4)
    engine = GenerationEngine(model, cache, EngineConfig(record_logits=True, max_prefill_tokens=24))
    system = _tokens(10, seed=1)
    prompts = [system + _tokens(n, seed=10 + i) for i, n in enumerate([3, 6, 1, 9, 4, 7, 2, 5])]
    params = [SamplingParams(max_new_tokens=10, n=2 if i % 3 == 0 else 1) for i in range(len(prompts))]
    ids = [engine.submit(p, sp) for p, sp in zip(prompts, params)]
    results, steps, defrag_moves = {}, 0, 0
    while engine.has_unfinished():
        for res in engine.step().finished:
            results[res.request_id] = res
        steps += 1
        if steps % 5 == 0:  # compaction in the middle of decoding
            defrag_moves += cache.defragment(order=order).pages_moved
            cache.check_invariants()
    stats = engine.stats()
    assert stats["cache_prefix_hit_tokens"] > 0
    assert stats["cache_cow_copies"] > 0
    assert stats["cache_evictions"] > 0
    assert defrag_moves > 0
    assert sum(r.num_cached_prompt_tokens for r in results.values()) > 0
    for rid, prompt, sp in zip(ids, prompts, params):
        outputs = results[rid].outputs
        assert len(outputs) == sp.n
        for out in outputs:
            assert out.finish_reason == "length" and len(out.token_ids) == 10
            _check_against_recompute(model, prompt, out)
    assert cache.stats()["pages_used"] == 0


@pytest.mark.parametrize("order", ["sequence", "lowest"])
def test_greedy_matches_recompute_with_hits_forks_cow_evictions_and_defrag(model, order):
    _greedy_run_with_defrag(model, order)


@pytest.mark.parametrize("page_size", [1, 3, 8])
def test_chunked_prefill_and_defrag_every_step(model, page_size):
    cache = _cache(num_pages=200 // page_size + 8, page_size=page_size)
    engine = GenerationEngine(model, cache, EngineConfig(record_logits=True, max_prefill_tokens=5,
                                                         defrag_every=1, defrag_order="lowest"))
    prompts = [_tokens(17, seed=20), _tokens(2, seed=21), _tokens(11, seed=22)]
    results = engine.generate(prompts, SamplingParams(max_new_tokens=7))
    assert engine.stats()["defragmentations"] == engine.stats()["steps"]
    for prompt, res in zip(prompts, results):
        _check_against_recompute(model, prompt, res.outputs[0])


def test_stop_token_ends_generation(model):
    prompt = _tokens(9, seed=30)
    free_run = _greedy_no_cache(model, prompt, 12)
    stop = free_run[4]
    expect = free_run[: free_run.index(stop) + 1]
    engine = GenerationEngine(model, _cache(), EngineConfig(record_logits=True))
    (res,) = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop_token_ids=[stop]))
    out = res.outputs[0]
    assert out.token_ids == expect and out.finish_reason == "stop"
    _check_against_recompute(model, prompt, out)


def test_preemption_recomputes_exactly(model):
    cache = _cache()
    engine = GenerationEngine(model, cache, EngineConfig(record_logits=True))
    prompts = [_tokens(7, seed=40), _tokens(12, seed=41)]
    ids = [engine.submit(p, SamplingParams(max_new_tokens=9)) for p in prompts]
    results = {}
    for _ in range(4):
        engine.step()
    engine.preempt(ids[0])
    assert engine.stats()["running_requests"] == 1
    while engine.has_unfinished():
        results.update({r.request_id: r for r in engine.step().finished})
    assert engine.stats()["preemptions"] == 1
    for rid, prompt in zip(ids, prompts):
        assert results[rid].outputs[0].token_ids == _greedy_no_cache(model, prompt, 9)
        _check_against_recompute(model, prompt, results[rid].outputs[0])


# ---------------------------------------------------------------------------- beams and samples

@pytest.mark.parametrize("width,use_stop,length_penalty,policy", [(2, False, 1.0, "fcfs"), (3, False, 0.0, "srpt"),
                                                                   (4, True, 1.0, "slo")])
def test_beam_search_matches_no_cache_beam_search(model, width, use_stop, length_penalty, policy):
    prompt = _tokens(6, seed=50)
    stops = ()
    if use_stop:  # a token that the unstopped search uses early, so some hypotheses end on it
        stops = (_beam_no_cache(model, prompt, width, 6)[1][0][2],)
    expect = _beam_no_cache(model, prompt, width, 6, stops, length_penalty)
    cache = _cache(num_pages=48, page_size=2)
    engine = GenerationEngine(model, cache, EngineConfig(record_logits=True, policy=policy))
    other = engine.submit(_tokens(5, seed=51), SamplingParams(max_new_tokens=4))  # shares the batches
    (res,) = engine.generate([prompt], SamplingParams(beam_width=width, max_new_tokens=6, stop_token_ids=stops,
                                                      length_penalty=length_penalty))
    assert [o.token_ids for o in res.outputs] == [toks for toks, _ in expect]
    for out, (toks, logprob) in zip(res.outputs, expect):
        assert out.cumulative_logprob == pytest.approx(logprob, abs=1e-4)
        assert out.score == pytest.approx(logprob / len(toks) ** length_penalty, abs=1e-4)
        _check_logits_only(model, prompt, out)
    if use_stop:
        assert any(o.finish_reason == "stop" for o in res.outputs)
    if width > 2:  # with two beams every parent happened to be kept once: forks without COW
        assert engine.stats()["cache_cow_copies"] > 0
    assert other != res.request_id
    while engine.has_unfinished():
        engine.step()
    assert cache.stats()["pages_used"] == 0


def _check_logits_only(model, prompt, output):
    seq = prompt + output.token_ids
    full = model.forward_full(seq)[len(prompt) - 1: len(seq) - 1]
    torch.testing.assert_close(output.logits, full, rtol=0, atol=1e-4)


def _run_sampling(model, params, prompt, extra_prompts=(), policy="fcfs"):
    engine = GenerationEngine(model, _cache(num_pages=96), EngineConfig(record_logits=True, policy=policy))
    for i, p in enumerate(extra_prompts):
        engine.submit(p, SamplingParams(max_new_tokens=3 + i, temperature=0.8, seed=i))
    (res,) = engine.generate([prompt], params)
    return res, engine


@pytest.mark.parametrize("policy", ["fcfs", "srpt", "slo"])
def test_parallel_sampling_is_reproducible_and_equals_recompute(model, policy):
    prompt = _tokens(9, seed=60)
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, top_k=100, max_new_tokens=8, seed=1234)
    first, engine = _run_sampling(model, params, prompt, policy=policy)
    again, _ = _run_sampling(model, params, prompt, policy=policy)
    crowded, _ = _run_sampling(model, params, prompt, extra_prompts=[_tokens(5, seed=61), prompt[:6]], policy=policy)
    samples = [o.token_ids for o in first.outputs]
    assert samples == [o.token_ids for o in again.outputs] == [o.token_ids for o in crowded.outputs]
    assert len({tuple(s) for s in samples}) > 1  # the samples differ from each other
    assert engine.stats()["cache_cow_copies"] > 0
    assert samples == _sample_no_cache(model, prompt, params)
    for out in first.outputs:
        _check_logits_only(model, prompt, out)
        logprobs = torch.log_softmax(model.forward_full(prompt + out.token_ids)[len(prompt) - 1:-1], -1)
        expect = float(logprobs[torch.arange(len(out.token_ids)), out.token_ids].sum())
        assert out.cumulative_logprob == pytest.approx(expect, abs=1e-3)


def test_parallel_sampling_with_stop_tokens(model):
    prompt = _tokens(4, seed=70)
    params = SamplingParams(n=3, temperature=1.5, max_new_tokens=10, seed=5,
                            stop_token_ids=list(range(0, 256, 9)))
    res, _ = _run_sampling(model, params, prompt)
    assert [o.token_ids for o in res.outputs] != []
    replay = _sample_no_cache(model, prompt, params)
    # outputs are listed in the order the samples finished; compare as sets of sequences
    assert sorted(o.token_ids for o in res.outputs) == sorted(replay)
    assert any(o.finish_reason == "stop" for o in res.outputs)


# ---------------------------------------------------------------------------- bad input

def test_bad_requests_are_named_and_change_nothing(model):
    engine = GenerationEngine(model, _cache(num_pages=16, page_size=4))
    with pytest.raises(ContextWindowExceeded):
        engine.submit(_tokens(129, seed=1))
    with pytest.raises(ContextWindowExceeded):
        engine.submit(_tokens(120, seed=1), SamplingParams(max_new_tokens=9))
    with pytest.raises(InvalidTokenIds):
        engine.submit([1, 2, 256])
    with pytest.raises(InvalidTokenIds):
        engine.submit("hello")
    with pytest.raises(InvalidTokenIds):
        engine.submit([])
    with pytest.raises(InvalidTokenIds):
        engine.submit([1.5, 2.0])
    with pytest.raises(InvalidTokenIds):
        engine.submit([1, 2], SamplingParams(stop_token_ids=[300]))
    with pytest.raises(InvalidStopTokens):
        engine.submit([1, 2], SamplingParams(stop_token_ids=["</s>"]))
    with pytest.raises(RequestTooLarge) as info:
        engine.submit(_tokens(40, seed=2), SamplingParams(max_new_tokens=30))
    assert isinstance(info.value, BudgetExceeded)
    with pytest.raises(ConfigError):
        engine.submit([1, 2], params={"max_new_tokens": 3})
    assert engine.stats()["waiting_requests"] == 0 and engine.stats()["prompt_tokens"] == 0


def test_preempting_what_is_not_running_is_named(model):
    engine = GenerationEngine(model, _cache(num_pages=16, page_size=4))
    a = engine.submit(_tokens(10, seed=3), SamplingParams(max_new_tokens=4))
    with pytest.raises(EngineError):
        engine.preempt(a)  # still waiting
    with pytest.raises(EngineError):
        engine.preempt(99)


def test_mismatched_cache_is_rejected(model):
    cache = PagedKVCache(KVCacheConfig(num_layers=3, num_kv_heads=2, head_dim=16, page_size=4, num_pages=8))
    with pytest.raises(ConfigError, match="layers"):
        GenerationEngine(model, cache)


def test_engine_config_validation():
    for kwargs in (dict(max_batch_seqs=0), dict(max_prefill_tokens=-1), dict(defrag_every=0),
                   dict(defrag_order="random")):
        with pytest.raises(ConfigError):
            EngineConfig(**kwargs)


def test_stats_report_throughput_and_hits(model):
    engine = GenerationEngine(model, _cache())
    system = _tokens(12, seed=80)
    engine.generate([system + [1]], SamplingParams(max_new_tokens=3))  # publishes the system prompt
    engine.generate([system + [2], system + [3]], SamplingParams(max_new_tokens=3))
    stats = engine.stats()
    assert stats["generated_tokens"] == 9 and stats["requests_finished"] == 3
    assert stats["tokens_per_second"] > 0 and math.isfinite(stats["tokens_per_second"])
    assert stats["cache_prefix_hit_tokens"] >= 2 * 12 - 2 * (12 % 4)


def test_prompts_submitted_together_compute_their_shared_pages_once(model):
    """Four prompts with a 40-token system prompt: the first computes it, the other three wait
    for its pages to be written and then hit them."""
    cache = _cache(num_pages=96, page_size=4)
    engine = GenerationEngine(model, cache, EngineConfig(record_logits=True))
    system = _tokens(40, seed=90)
    prompts = [system + _tokens(5 + i, seed=91 + i) for i in range(4)]
    results = engine.generate(prompts, SamplingParams(max_new_tokens=4))
    assert [r.num_cached_prompt_tokens for r in results] == [0, 40, 40, 40]
    assert engine.stats()["prefill_tokens_computed"] == sum(len(p) for p in prompts) - 3 * 40
    for prompt, res in zip(prompts, results):
        _check_against_recompute(model, prompt, res.outputs[0])
    assert cache.stats()["pages_used"] == 0


@pytest.mark.parametrize("policy", ["fcfs", "srpt", "slo"])
def test_preempted_beams_and_samples_recompute_exactly(model, policy):
    """A group (beams, samples) preempted mid-flight recomputes every member and goes on with
    exactly the tokens an undisturbed run produces."""
    prompt = _tokens(7, seed=95)
    beam = SamplingParams(beam_width=3, max_new_tokens=6)
    samples = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=9)

    def run(preempt_at):
        engine = GenerationEngine(model, _cache(num_pages=64, page_size=2),
                                  EngineConfig(record_logits=True, policy=policy))
        ids = [engine.submit(prompt, beam), engine.submit(prompt[:5], samples)]
        results, steps = {}, 0
        while engine.has_unfinished():
            results.update({r.request_id: r for r in engine.step().finished})
            steps += 1
            if steps == preempt_at:
                for rid in ids:
                    engine.preempt(rid)
        return [results[i] for i in ids], engine.stats()

    (beams, sampled), stats = run(preempt_at=3)
    (beams_ref, sampled_ref), _ = run(preempt_at=None)
    assert stats["preemptions"] == 2
    assert [o.token_ids for o in beams.outputs] == [o.token_ids for o in beams_ref.outputs]
    assert [o.token_ids for o in sampled.outputs] == [o.token_ids for o in sampled_ref.outputs]
    assert [o.token_ids for o in beams.outputs] == [t for t, _ in _beam_no_cache(model, prompt, 3, 6)]
    assert sorted(o.token_ids for o in sampled.outputs) == sorted(_sample_no_cache(model, prompt[:5], samples))
    for out in beams.outputs:
        _check_logits_only(model, prompt, out)
    for out in sampled.outputs:
        _check_logits_only(model, prompt[:5], out)


def test_tiny_temperature_samples_like_greedy(model):
    prompt = _tokens(9, seed=96)
    engine = GenerationEngine(model, _cache())
    (res,) = engine.generate([prompt], SamplingParams(temperature=1e-40, max_new_tokens=5, seed=1))
    assert res.outputs[0].token_ids == _greedy_no_cache(model, prompt, 5)


def test_the_built_in_model_implements_the_model_interface(model):
    from llmds_torch.models.interface import CausalLM
    assert isinstance(model, CausalLM)
    assert (model.num_layers, model.num_kv_heads, model.head_dim) == (CFG.num_layers, CFG.num_kv_heads, CFG.head_dim)
    assert (model.vocab_size, model.max_context_len) == (CFG.vocab_size, CFG.max_position)
