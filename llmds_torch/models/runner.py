"""The model runner: executes a scheduler's :class:`~llmds_torch.sched.Batch` with any
:class:`~llmds_torch.models.interface.CausalLM` and chooses each request's next tokens.

One step: ``scheduler.get_batch`` reserves the step's slots; ``model.forward`` computes exactly
those positions (writing their KV); the logits rows that sample become tokens (greedy, temperature,
top-k / top-p, parallel samples, beam search); ``scheduler.complete_batch`` commits. The runner
keeps each request's sampling state (its generator, each branch's log-probability, finished
hypotheses) aligned with the scheduler's group members: member ``i`` of a request is branch ``i``.

A step is all or nothing: if the forward, sampling or completion raises, the scheduler's batch is
aborted (the cache rolls its reservations back), every generator is put back where it was, and
the runner's state is untouched, so the next step computes the same work again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmds_torch.errors import ConfigError, InvalidTokenIds
from llmds_torch.models.interface import CausalLM
from llmds_torch.models.sampling import SamplingParams, sample_tokens, token_logprobs
from llmds_torch.sched import Batch, Scheduler, StepResult


@dataclass(slots=True)
class GeneratedSequence:
    """One output of a request: a sample, or a beam.

    Attributes
    ----------
    token_ids : list of int
        Generated tokens (a stop token that ended it included).
    finish_reason : str
        ``"stop"`` or ``"length"``.
    cumulative_logprob : float
        Sum of the log-probabilities of ``token_ids`` under the model.
    score : float
        Beam search's ranking score, ``cumulative_logprob / len(token_ids) ** length_penalty``;
        equals ``cumulative_logprob`` outside beam search.
    logits : Tensor ``[len(token_ids), vocab]`` or None
        The logits each token was chosen from, when the runner records logits.
    """

    token_ids: list[int]
    finish_reason: str
    cumulative_logprob: float
    score: float
    logits: torch.Tensor | None = None


@dataclass(slots=True)
class GenerationResult:
    """What a finished request produced."""

    request_id: int
    prompt: list[int]
    outputs: list[GeneratedSequence]
    num_cached_prompt_tokens: int


@dataclass(slots=True)
class StepOutput:
    """What one runner step did.

    Attributes
    ----------
    batch : Batch
        The scheduler's batch (empty when there was nothing to run).
    prefilled : dict request_id -> int
        Prompt (or recompute) tokens computed this step, prefix hits excluded.
    new_tokens : dict request_id -> list of int
        Tokens generated this step, one per branch that goes on (beam search: the new beams'
        last tokens).
    finished : list of GenerationResult
        Requests that finished this step (their pages are released).
    """

    batch: Batch
    prefilled: dict[int, int] = field(default_factory=dict)
    new_tokens: dict[int, list[int]] = field(default_factory=dict)
    finished: list[GenerationResult] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Branch:
    """One member of a request's group as the runner sees it."""

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Group:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    branches: list[_Branch] = field(default_factory=lambda: [_Branch()])
    done: list[GeneratedSequence] = field(default_factory=list)
    num_cached_prompt_tokens: int | None = None


@dataclass(slots=True, eq=False)
class _Decision:
    """A group's choice in one step, applied only once the scheduler committed the step."""

    group: _Group
    result: StepResult
    branches: list[_Branch]
    ended: list[GeneratedSequence]
    num_new_tokens: int


class ModelRunner:
    """Runs scheduler batches on a model and samples their tokens.

    Parameters
    ----------
    model : CausalLM
    cache : PagedKVCache
        The cache the scheduler reserves in; its layers, KV heads and head dim must match the model.
    record_logits : bool
        Keep the logits row ``[vocab]`` behind every generated token in the results (tests).
    """

    def __init__(self, model: CausalLM, cache, *, record_logits: bool = False):
        cfg = cache.config
        need = (model.num_layers, model.num_kv_heads, model.head_dim)
        if (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) != need:
            raise ConfigError(f"cache holds {cfg.num_layers} layers x {cfg.num_kv_heads} KV heads x head_dim "
                              f"{cfg.head_dim}; the model needs {need[0]} x {need[1]} x {need[2]}")
        self.model = model
        self.cache = cache
        self.record_logits = record_logits
        self._groups: dict[int, _Group] = {}
        self.counters = dict(steps=0, prefill_tokens_computed=0, generated_tokens=0, requests_finished=0,
                             peak_pages_used=0)
        self.busy_seconds = 0.0

    # ------------------------------------------------------------------ requests

    def check_request(self, prompt, params: SamplingParams) -> list[int]:
        """Validate a request against the model before anything is reserved; returns the prompt
        as a list of ints.

        Raises
        ------
        ConfigError
            ``params`` is not a SamplingParams.
        InvalidTokenIds
            Not a non-empty 1-D sequence of ints, or ids (stop tokens too) outside the vocabulary.
        ContextWindowExceeded
            ``len(prompt) + max_new_tokens`` exceeds the model's ``max_context_len``.
        """
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, (str, bytes)):
            raise InvalidTokenIds("prompt must be a sequence of token ids, not text (tokenize it first)")
        try:
            ids = torch.as_tensor(prompt)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidTokenIds(f"prompt must be a sequence of int token ids: {exc}") from None
        if ids.dim() != 1 or ids.numel() == 0:
            raise InvalidTokenIds(f"prompt must be a non-empty 1-D sequence of token ids, got shape {tuple(ids.shape)}")
        self.model.check_token_ids(ids)
        if params.stop_token_ids:
            self.model.check_token_ids(list(params.stop_token_ids))
        self.model.check_length(ids.numel() + params.max_new_tokens)
        return ids.tolist()

    def add_request(self, request_id: int, prompt: Sequence[int], params: SamplingParams,
                    generator: torch.Generator | None = None) -> None:
        """Track the sampling state of a request the scheduler accepted as ``request_id``
        (``generator``: default ``params.make_generator()``)."""
        if generator is None and not params.greedy:
            generator = params.make_generator()
        self._groups[request_id] = _Group(request_id, list(prompt), params, generator)

    def drop_request(self, request_id: int) -> None:
        """Forget a request (one the scheduler refused after ``add_request``)."""
        self._groups.pop(request_id, None)

    # ------------------------------------------------------------------ one step

    def step(self, scheduler: Scheduler, clock: Callable[[], float] = time.monotonic) -> StepOutput:
        """Run one scheduler step: ``get_batch(clock())``, forward, sample, ``complete_batch(.., clock())``.

        If anything raises after the batch was built, the batch is aborted, generators are
        restored and the error propagates; nothing observable changed.
        """
        batch = scheduler.get_batch(clock())
        out = StepOutput(batch)
        if not batch:
            return out
        started = time.perf_counter()
        saved = {rid: g.generator.get_state() for rid, g in self._groups.items() if g.generator is not None}
        try:
            logits = self.model.forward(self.cache, batch.seq_ids, [list(item.token_ids) for item in batch.items])
            decisions = self._decide(batch, logits)
            scheduler.complete_batch([d.result for d in decisions], clock())
        except BaseException:
            for rid, state in saved.items():
                self._groups[rid].generator.set_state(state)
            if scheduler.outstanding is not None:
                scheduler.abort_batch()
            raise
        self._apply(batch, decisions, out)
        self.busy_seconds += time.perf_counter() - started
        return out

    def _decide(self, batch: Batch, logits: torch.Tensor) -> list[_Decision]:
        rows_of: dict[int, list[int]] = {}
        for row, item in enumerate(batch.items):
            if item.samples:
                rows_of.setdefault(item.request_id, []).append(row)
        decisions = []
        for rid, rows in rows_of.items():
            group = self._groups[rid]
            group_logits = logits[rows]  # [members, vocab], member order
            if group.params.beam_width > 1:
                decisions.append(self._beam_decision(group, group_logits))
            else:
                decisions.append(self._sample_decision(group, group_logits))
        return decisions

    def _apply(self, batch: Batch, decisions: list[_Decision], out: StepOutput) -> None:
        for item in batch.items:
            if item.kind != "prefill":
                continue
            group = self._groups[item.request_id]
            if group.num_cached_prompt_tokens is None:
                group.num_cached_prompt_tokens = item.start
            out.prefilled[item.request_id] = out.prefilled.get(item.request_id, 0) + item.num_tokens
            self.counters["prefill_tokens_computed"] += item.num_tokens
        for d in decisions:
            group = d.group
            group.branches = d.branches
            group.done.extend(d.ended)
            out.new_tokens[group.request_id] = [b.tokens[-1] for b in d.branches]
            self.counters["generated_tokens"] += d.num_new_tokens
            if not d.branches:
                out.finished.append(self._finish(group))
        self.counters["steps"] += 1
        self.counters["peak_pages_used"] = max(self.counters["peak_pages_used"], self.cache.stats()["pages_used"])

    def _finish(self, group: _Group) -> GenerationResult:
        del self._groups[group.request_id]
        self.counters["requests_finished"] += 1
        outputs = group.done
        if group.params.beam_width > 1:
            outputs = sorted(outputs, key=lambda o: -o.score)[:group.params.beam_width]  # stable
        return GenerationResult(group.request_id, group.prompt, outputs, group.num_cached_prompt_tokens or 0)

    # ------------------------------------------------------------------ choosing tokens

    def _extend(self, parent: _Branch, token: int, logprob: float, row: torch.Tensor) -> _Branch:
        logits = parent.logits + [row.detach().float().cpu()] if self.record_logits else parent.logits
        return _Branch(parent.tokens + [token], parent.logprob + logprob, logits)

    def _output(self, group: _Group, branch: _Branch, reason: str) -> GeneratedSequence:
        score = branch.logprob
        if group.params.beam_width > 1:
            score = branch.logprob / len(branch.tokens) ** group.params.length_penalty
        logits = torch.stack(branch.logits) if self.record_logits else None
        return GeneratedSequence(list(branch.tokens), reason, branch.logprob, score, logits)

    def _finish_reason(self, params: SamplingParams, tokens: list[int]) -> str | None:
        if tokens[-1] in params.stop_token_ids:
            return "stop"
        if len(tokens) >= params.max_new_tokens:
            return "length"
        return None

    def _sample_decision(self, group: _Group, rows: torch.Tensor) -> _Decision:
        """One token per branch from ``rows`` ``[branches, vocab]``; the first step of a request
        with ``n`` samples draws ``n`` tokens from its one row."""
        params = group.params
        parents = list(range(len(group.branches)))
        if params.n > 1 and not group.branches[0].tokens:
            rows, parents = rows.expand(params.n, -1), [0] * params.n
        tokens = sample_tokens(rows, params, group.generator).tolist()
        logprobs = token_logprobs(rows)
        pairs, branches, ended = [], [], []
        for i, (parent, token) in enumerate(zip(parents, tokens)):
            branch = self._extend(group.branches[parent], token, float(logprobs[i, token]), rows[i])
            reason = self._finish_reason(params, branch.tokens)
            if reason is None:
                pairs.append((parent, token))
                branches.append(branch)
            else:
                ended.append(self._output(group, branch, reason))
        result = StepResult(group.request_id, branches=tuple(pairs), finished=not pairs)
        return _Decision(group, result, branches, ended, len(tokens))

    def _beam_decision(self, group: _Group, rows: torch.Tensor) -> _Decision:
        """Keep the ``beam_width`` best continuations of the live beams.

        Candidates are ranked by cumulative log-probability (ties: lower beam index, then lower
        token id); the best ``2 * beam_width`` are walked in order: a stop token ends a
        hypothesis (when ranked within ``beam_width``), anything else becomes a live beam until
        ``beam_width`` are found. Beam search ends when ``beam_width`` hypotheses ended, or at
        ``max_new_tokens``; the results are the best hypotheses by ``score``.
        """
        params, beams = group.params, group.branches
        width = params.beam_width
        stops = set(params.stop_token_ids)
        logprobs = token_logprobs(rows)  # [beams, V]
        scores = torch.tensor([b.logprob for b in beams])[:, None] + logprobs  # [beams, V]
        order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:2 * width].tolist()
        vocab = rows.shape[-1]
        pairs, branches, ended = [], [], []
        for rank, flat in enumerate(order):
            parent, token = flat // vocab, flat % vocab
            lp = float(logprobs[parent, token])
            if token in stops:
                if rank < width:
                    ended.append(self._output(group, self._extend(beams[parent], token, lp, rows[parent]), "stop"))
                continue
            pairs.append((parent, token))
            branches.append(self._extend(beams[parent], token, lp, rows[parent]))
            if len(branches) == width:
                break
        num_new = len(branches) + len(ended)
        at_length = bool(branches) and len(branches[0].tokens) >= params.max_new_tokens
        if len(group.done) + len(ended) >= width or at_length or not branches:
            if at_length:
                ended.extend(self._output(group, b, "length") for b in branches)
            pairs, branches = [], []
        result = StepResult(group.request_id, branches=tuple(pairs), finished=not pairs)
        return _Decision(group, result, branches, ended, num_new)
