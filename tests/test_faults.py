"""Fault injection: pool growth, the model's forward (before and after it wrote KV) and sampling
raise at random points, on many seeds and under every policy. After each fault the step left
nothing behind: no batch outstanding, each running sequence holds exactly prompt + its outputs
(the last one not yet fed), the cache's invariants hold. In the end every request finishes with
exactly the tokens of an undisturbed run, and every page is back."""

import random

import pytest
import torch

from llmds_torch.kv import BlockManager, KVCacheConfig, PagedKVCache
from llmds_torch.models import runner as runner_module
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.sched import Request, Scheduler, SchedulerConfig, StepResult

CFG = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=128)


class InjectedFault(RuntimeError):
    pass


class Faults:
    """Raises at a named point with probability ``rate``; counts where it did."""

    def __init__(self, seed: int, rate: float):
        self.rng = random.Random(seed)
        self.rate = rate
        self.raised: dict[str, int] = {}
        self.armed = True

    def maybe(self, where: str) -> None:
        if self.armed and self.rng.random() < self.rate:
            self.raised[where] = self.raised.get(where, 0) + 1
            raise InjectedFault(where)


class FlakyModel:
    """The model with a forward that may raise before or after computing (and writing KV)."""

    def __init__(self, model, faults: Faults):
        self._model, self._faults = model, faults

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, cache, seq_ids, token_ids):
        self._faults.maybe("forward_before")
        logits = self._model.forward(cache, seq_ids, token_ids)
        self._faults.maybe("forward_after")
        return logits


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CFG, seed=5)


def _cache(num_pages: int, max_num_pages: int, page_size: int = 4) -> PagedKVCache:
    cache = PagedKVCache(KVCacheConfig(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, page_size=page_size,
                                       num_pages=num_pages, max_num_pages=max_num_pages, dtype=torch.float32))
    cache.pool.fill_(float("nan"))
    return cache


def _flaky_growth(manager, faults: Faults) -> None:
    """Growing the pool's storage may fail (as a device out-of-memory would)."""
    grow_storage = manager.on_resize

    def on_resize(num_pages):
        faults.maybe("growth")
        if grow_storage is not None:
            grow_storage(num_pages)

    manager.on_resize = on_resize


def _workload(seed: int):
    rng = random.Random(seed)
    system = [rng.randrange(CFG.vocab_size) for _ in range(9)]
    work = []
    for i in range(6):
        prompt = (system if i % 2 else []) + [rng.randrange(CFG.vocab_size) for _ in range(rng.randrange(2, 14))]
        kind = i % 3
        if kind == 0:
            params = SamplingParams(max_new_tokens=rng.randrange(3, 8))
        elif kind == 1:
            params = SamplingParams(n=2, temperature=1.0, top_k=40, max_new_tokens=rng.randrange(3, 8), seed=i)
        else:
            params = SamplingParams(beam_width=2, max_new_tokens=rng.randrange(3, 7))
        work.append((prompt, params))
    return work


def _check_consistent(engine) -> None:
    scheduler, cache = engine.scheduler, engine.cache
    assert scheduler.outstanding is None
    cache.check_invariants()
    for rid in list(scheduler._running):
        state = scheduler.state(rid)
        for member in state.members:
            assert cache.token_ids(member.seq_id) == list(state.request.prompt) + member.output[:-1]


def _run(model, policy: str, seed: int, faults: Faults | None):
    cache = _cache(num_pages=4, max_num_pages=96)
    if faults is not None:
        model = FlakyModel(model, faults)
        _flaky_growth(cache.manager, faults)
    engine = GenerationEngine(model, cache, EngineConfig(policy=policy, max_batch_seqs=6, max_prefill_tokens=12))
    ids = [engine.submit(p, sp) for p, sp in _workload(seed)]
    results, failures = {}, 0
    while engine.has_unfinished():
        try:
            step = engine.step()
        except InjectedFault:
            failures += 1
            assert failures < 500, "no progress"
            _check_consistent(engine)
            continue
        results.update({r.request_id: r for r in step.finished})
    cache.check_invariants()
    assert cache.stats()["pages_used"] == 0
    return [[o.token_ids for o in results[i].outputs] for i in ids], failures


@pytest.mark.parametrize("policy", ["fcfs", "srpt", "slo"])
@pytest.mark.parametrize("seed", range(4))
def test_engine_survives_faults_in_growth_forward_and_sampling(model, policy, seed, monkeypatch):
    expected, _ = _run(model, policy, seed, faults=None)
    faults = Faults(seed=100 + seed, rate=0.2)
    real_sample = runner_module.sample_tokens

    def flaky_sample(*args, **kwargs):
        faults.maybe("sampling")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(runner_module, "sample_tokens", flaky_sample)
    got, failures = _run(model, policy, seed, faults)
    assert got == expected
    assert failures == sum(faults.raised.values()) > 0


def test_every_fault_point_is_exercised(model, monkeypatch):
    """Across the seeds above each point raised at least once (so the suite covers them all)."""
    seen = set()
    real_sample = runner_module.sample_tokens
    for seed in range(4):
        faults = Faults(seed=100 + seed, rate=0.2)

        def flaky_sample(*args, _faults=faults, **kwargs):
            _faults.maybe("sampling")
            return real_sample(*args, **kwargs)

        monkeypatch.setattr(runner_module, "sample_tokens", flaky_sample)
        _run(model, "fcfs", seed, faults)
        seen |= set(faults.raised)
    assert seen == {"growth", "forward_before", "forward_after", "sampling"}


@pytest.mark.parametrize("seed", range(6))
def test_scheduler_loses_and_duplicates_nothing_when_growth_fails(seed):
    """Torch-free: growth fails inside ``get_batch`` (after decode reservations were made in the
    same call). No request is lost, no token is fed twice."""
    rng = random.Random(seed)
    faults = Faults(seed=1000 + seed, rate=0.6)
    manager = BlockManager(num_pages=1, page_size=4, max_num_pages=64)
    _flaky_growth(manager, faults)
    scheduler = Scheduler(manager, SchedulerConfig(policy=["fcfs", "srpt", "slo"][seed % 3],
                                                   max_batch_size=4, max_batch_tokens=16))
    lengths = {}
    for _ in range(8):
        request = Request([rng.randrange(1, 1000) for _ in range(rng.randrange(1, 20))], rng.randrange(1, 9))
        lengths[scheduler.submit(request, now=0.0)] = request
    outputs: dict[int, list[int]] = {}
    now, failures = 0.0, 0
    while scheduler.has_work():
        now += 0.01
        try:
            batch = scheduler.get_batch(now)
        except InjectedFault:
            failures += 1
            assert scheduler.outstanding is None
            manager.check_invariants()
            for rid in list(scheduler._running):
                state = scheduler.state(rid)
                assert manager.token_ids(state.seq_id) == list(state.request.prompt) + state.output[:-1]
            continue
        for item in batch:
            assert manager.token_ids(item.seq_id)[:item.end] == (
                list(lengths[item.request_id].prompt) + outputs.get(item.request_id, []))[:item.end]
            manager.mark_written(item.seq_id, item.num_tokens)
        results = [StepResult(i.request_id, rng.randrange(1, 1000)) for i in batch if i.samples]
        for r in results:
            outputs.setdefault(r.request_id, []).append(r.token_id)
        scheduler.complete_batch(results, now)
    assert failures > 0
    assert {rid: len(out) for rid, out in outputs.items()} == {rid: r.max_new_tokens for rid, r in lengths.items()}
    assert manager.stats()["pages_used"] == 0
    manager.check_invariants()
