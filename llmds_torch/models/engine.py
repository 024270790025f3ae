"""The generation engine: ties a :class:`LlamaModel` to a :class:`~llmds_torch.kv.PagedKVCache`.

Each step runs one mixed batch through the model: prompt chunks of newly admitted requests (only
the part the prefix cache did not already hold) and one decode token for every live sequence.
Requests join and leave between steps (continuous batching). Parallel samples (``n > 1``) and
beam search branch a request into several cache sequences with ``fork``; their shared pages are
copied on write by the cache.

Two ways to drive it:

- :meth:`GenerationEngine.step` admits waiting requests first come, first served (a request is
  admitted only when its worst-case page need fits next to the running ones, so nothing runs out
  of pages mid-flight), then calls :meth:`run_step`;
- :meth:`GenerationEngine.run_step` is the seam for an outside scheduler: it takes the prompt
  chunks and decode requests to compute now, and reports what happened per request.
"""

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from llmds_torch.errors import ConfigError, InvalidTokenIds, LLMDSError, RequestTooLarge
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams, sample_tokens, token_logprobs

WAITING, PREFILL, DECODE, FINISHED = "waiting", "prefill", "decode", "finished"


class EngineError(LLMDSError, ValueError):
    """A ``run_step`` or ``preempt`` call that does not fit the requests' states."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of :class:`GenerationEngine`.

    Parameters
    ----------
    max_batch_seqs : int
        Most cache sequences (a request with ``n`` samples or ``beam_width`` beams counts that
        many) running at once under the built-in admission.
    max_prefill_tokens : int
        Prompt tokens computed per step (longer prompts are prefilled in chunks).
    defrag_every : int or None
        Compact the cache (``cache.defragment``) after every this many steps; ``None``: never.
    defrag_order : str
        ``"sequence"`` or ``"lowest"``, passed to ``cache.defragment``.
    record_logits : bool
        Keep the logits row ``[vocab]`` behind every generated token in the results (tests).
    """

    max_batch_seqs: int = 64
    max_prefill_tokens: int = 512
    defrag_every: int | None = None
    defrag_order: str = "sequence"
    record_logits: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_seqs", "max_prefill_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.defrag_every is not None and (isinstance(self.defrag_every, bool)
                                              or not isinstance(self.defrag_every, int) or self.defrag_every < 1):
            raise ConfigError(f"defrag_every must be a positive int or None, got {self.defrag_every!r}")
        if self.defrag_order not in ("sequence", "lowest"):
            raise ConfigError(f"defrag_order must be 'sequence' or 'lowest', got {self.defrag_order!r}")


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
        The logits each token was chosen from, when ``EngineConfig.record_logits``.
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
class StepResult:
    """What one :meth:`GenerationEngine.run_step` did.

    Attributes
    ----------
    prefilled : dict request_id -> int
        Prompt tokens computed this step (prefix hits excluded).
    new_tokens : dict request_id -> list of int
        Tokens generated this step, one per live branch (beam search: the new beams' last tokens).
    finished : list of GenerationResult
        Requests that finished this step (their pages are released).
    """

    prefilled: dict[int, int] = field(default_factory=dict)
    new_tokens: dict[int, list[int]] = field(default_factory=dict)
    finished: list[GenerationResult] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Branch:
    """One cache sequence of a request and what it generated; the last token is not yet in the
    cache (the next decode step appends it)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Request:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    salt: bytes | str | None
    generator: torch.Generator
    worst_case_pages: int
    state: str = WAITING
    seq_id: int | None = None  # the prompt's sequence while prefilling
    prefill_tokens: list[int] = field(default_factory=list)  # prompt (+ outputs after a preemption)
    num_computed: int = 0
    num_cached_prompt_tokens: int = 0
    branches: list[_Branch] = field(default_factory=list)
    done: list[GeneratedSequence] = field(default_factory=list)

    @property
    def width(self) -> int:
        return max(self.params.n, self.params.beam_width)


class GenerationEngine:
    """Continuous-batching generation over a paged KV cache.

    Parameters
    ----------
    model : LlamaModel
    cache : PagedKVCache
        Its ``num_layers``, ``num_kv_heads``, ``head_dim`` must match the model.
    config : EngineConfig, optional
    """

    def __init__(self, model: LlamaModel, cache, config: EngineConfig | None = None):
        cfg = cache.config
        mc = model.config
        if (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) != (mc.num_layers, mc.num_kv_heads, mc.head_dim):
            raise ConfigError(f"cache holds {cfg.num_layers} layers x {cfg.num_kv_heads} KV heads x head_dim "
                              f"{cfg.head_dim}; the model needs {mc.num_layers} x {mc.num_kv_heads} x {mc.head_dim}")
        self.model = model
        self.cache = cache
        self.config = config or EngineConfig()
        self._requests: dict[int, _Request] = {}
        self._waiting: deque[int] = deque()
        self._running: list[int] = []  # admission order
        self._next_id = 0
        self._reserved_pages = 0
        self.counters = dict(steps=0, prompt_tokens=0, prefill_tokens_computed=0, generated_tokens=0,
                             requests_finished=0, preemptions=0, defragmentations=0,
                             peak_pages_used=0)
        self._busy_seconds = 0.0

    # ------------------------------------------------------------------ submission

    @property
    def capacity_pages(self) -> int:
        """Pages the cache can ever hold."""
        return self.cache.config.max_num_pages or self.cache.config.num_pages

    def _worst_case_pages(self, num_prompt: int, params: SamplingParams) -> int:
        """Pages a request can need at its longest: every branch a full private copy."""
        per_branch = math.ceil((num_prompt + params.max_new_tokens) / self.cache.page_size)
        return max(params.n, params.beam_width) * per_branch

    def submit(self, prompt: Sequence[int], params: SamplingParams | None = None, *,
               salt: bytes | str | None = None) -> int:
        """Queue a request; returns its id.

        Raises
        ------
        InvalidTokenIds
            Empty prompt, or ids outside ``[0, vocab_size)`` (stop tokens too).
        ContextWindowExceeded
            ``len(prompt) + max_new_tokens`` exceeds the model's ``max_position``.
        RequestTooLarge
            Its worst-case pages exceed the cache.
        """
        params = params or SamplingParams()
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
        prompt = ids.tolist()
        if params.stop_token_ids:
            self.model.check_token_ids(list(params.stop_token_ids))
        self.model.check_length(len(prompt))
        self.model.check_length(len(prompt) + params.max_new_tokens)
        worst = self._worst_case_pages(len(prompt), params)
        if worst > self.capacity_pages:
            raise RequestTooLarge(f"request needs up to {worst} pages (prompt {len(prompt)} + "
                                  f"{params.max_new_tokens} new tokens, width {max(params.n, params.beam_width)}); "
                                  f"the cache holds {self.capacity_pages}")
        request_id = self._next_id
        self._next_id += 1
        self._requests[request_id] = _Request(request_id, prompt, params, salt, params.make_generator(), worst,
                                              prefill_tokens=list(prompt))
        self._waiting.append(request_id)
        self.counters["prompt_tokens"] += len(prompt)
        return request_id

    # ------------------------------------------------------------------ built-in loop

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> StepResult:
        """Admit waiting requests first come, first served, then run one step."""
        budget = self.config.max_prefill_tokens
        prefill: list[tuple[int, int]] = []
        live_seqs = 0
        for rid in self._running:
            req = self._requests[rid]
            if req.state == PREFILL and budget > 0:
                take = min(budget, len(req.prefill_tokens) - req.num_computed)
                prefill.append((rid, take))
                budget -= take
            live_seqs += req.width
        reserving = self._reserved_pages
        for rid in self._waiting:
            req = self._requests[rid]
            if (budget <= 0 or reserving + req.worst_case_pages > self.capacity_pages
                    or live_seqs + req.width > self.config.max_batch_seqs):
                break
            prefill.append((rid, budget))
            budget -= min(budget, len(req.prefill_tokens))
            live_seqs += req.width
            reserving += req.worst_case_pages
        decode = [rid for rid in self._running if self._requests[rid].state == DECODE]
        return self.run_step(prefill=prefill, decode=decode)

    def generate(self, prompts: Iterable[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, salt=None, progress: bool = False) -> list[GenerationResult]:
        """Submit every prompt, run until all finish, return results in prompt order."""
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        ids = [self.submit(p, sp, salt=salt) for p, sp in zip(prompts, params)]
        wanted = set(ids)
        results: dict[int, GenerationResult] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="generate", unit="req")
        while wanted - results.keys():
            for res in self.step().finished:
                if res.request_id in wanted:
                    results[res.request_id] = res
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [results[i] for i in ids]

    # ------------------------------------------------------------------ the seam

    def run_step(self, prefill: Sequence[tuple[int, int]] = (), decode: Sequence[int] = ()) -> StepResult:
        """Run one model step.

        Parameters
        ----------
        prefill : sequence of (request_id, max_tokens)
            Compute up to ``max_tokens`` more prompt tokens of each request (a waiting request is
            attached to the cache first, and tokens found in the prefix cache are skipped).
        decode : sequence of request_id
            Requests that are decoding: every live branch feeds its last token.

        Raises
        ------
        EngineError
            An unknown request, one named twice, or one in the wrong state; nothing changes.
        OutOfPages
            From the cache, before anything changes, when the pages do not suffice.
        """
        self._check_step(prefill, decode)
        started = time.perf_counter()
        result = StepResult()
        decode_branches = [b for rid in decode for b in self._requests[rid].branches]
        self._reserve_step([self._requests[rid] for rid, _ in prefill], decode_branches)
        seq_ids: list[int] = []
        token_lists: list[list[int]] = []
        prefill_reqs: list[_Request] = []
        for rid, max_tokens in prefill:
            req = self._requests[rid]
            take = min(max_tokens, len(req.prefill_tokens) - req.num_computed)
            seq_ids.append(req.seq_id)
            token_lists.append(req.prefill_tokens[req.num_computed:req.num_computed + take])
            prefill_reqs.append(req)
            result.prefilled[rid] = take
        for branch in decode_branches:
            seq_ids.append(branch.seq_id)
            token_lists.append([branch.tokens[-1]])
        logits = self.model.forward(self.cache, seq_ids, token_lists) if seq_ids else None

        row = 0
        for req, tokens in zip(prefill_reqs, token_lists):
            req.num_computed += len(tokens)
            self.counters["prefill_tokens_computed"] += len(tokens)
            if req.num_computed == len(req.prefill_tokens):
                self._start_decoding(req, logits[row], result)
            row += 1
        for rid in decode:
            req = self._requests[rid]
            rows = logits[row:row + len(req.branches)]
            row += len(req.branches)
            if req.params.beam_width > 1:
                self._beam_step(req, rows, result)
            else:
                self._sample_step(req, req.branches, rows, result)
        self.counters["steps"] += 1
        self.counters["peak_pages_used"] = max(self.counters["peak_pages_used"], self.cache.stats()["pages_used"])
        every = self.config.defrag_every
        if every is not None and self.counters["steps"] % every == 0:
            self.cache.defragment(order=self.config.defrag_order)
            self.counters["defragmentations"] += 1
        self._busy_seconds += time.perf_counter() - started
        return result

    def _check_step(self, prefill, decode) -> None:
        seen = set()
        for item in prefill:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise EngineError(f"prefill entries are (request_id, max_tokens) pairs, got {item!r}")
            rid, max_tokens = item
            req = self._get(rid)
            if req.state not in (WAITING, PREFILL):
                raise EngineError(f"request {rid} is {req.state}; only waiting or prefilling requests prefill")
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise EngineError(f"max_tokens of request {rid} must be a positive int, got {max_tokens!r}")
            if rid in seen:
                raise EngineError(f"request {rid} appears twice in one step")
            seen.add(rid)
        for rid in decode:
            req = self._get(rid)
            if req.state != DECODE:
                raise EngineError(f"request {rid} is {req.state}; only decoding requests decode")
            if rid in seen:
                raise EngineError(f"request {rid} appears twice in one step")
            seen.add(rid)

    def _get(self, rid) -> _Request:
        req = self._requests.get(rid) if isinstance(rid, int) else None
        if req is None or req.state == FINISHED:
            raise EngineError(f"request {rid!r} is unknown or finished")
        return req

    def _reserve_step(self, prefill_reqs: list[_Request], decode_branches: list[_Branch]) -> None:
        """Attach waiting requests and reserve one decode slot per live branch (copy-on-write of
        shared last pages happens here). All or nothing: a step that cannot fit even with no
        prefix hit raises ``OutOfPages`` before touching the cache; one that might fit thanks to
        hits is tried, and on ``OutOfPages`` the sequences it attached are detached again and the
        cache's counters restored (pages evicted on the way stay evicted)."""
        cache = self.cache
        waiting = [req for req in prefill_reqs if req.state == WAITING]
        decode_ids = [b.seq_id for b in decode_branches]
        worst = sum(-(-len(req.prefill_tokens) // cache.page_size) for req in waiting)
        worst += cache.pages_to_append(decode_ids, 1) if decode_ids else 0
        counters = dict(cache.manager.counters) if worst > cache.available_pages() else None
        attached: list[_Request] = []
        try:
            for req in prefill_reqs:
                if req.state == WAITING:
                    req.seq_id = self.cache.attach(req.prefill_tokens, salt=req.salt)
                    attached.append(req)
            if decode_branches:
                self.cache.append_batch([b.seq_id for b in decode_branches], [b.tokens[-1] for b in decode_branches])
        except Exception:
            for req in attached:
                self.cache.detach(req.seq_id)
                req.seq_id = None
            if counters is not None:
                counters["refusals"] = cache.manager.counters["refusals"]
                cache.manager.counters.update(counters)
            raise
        for req in attached:
            self._attached(req)

    def _attached(self, req: _Request) -> None:
        req.num_computed = self.cache.num_cached_tokens(req.seq_id)
        if not req.branches:  # a preempted request keeps its first count
            req.num_cached_prompt_tokens = req.num_computed
        req.state = PREFILL
        self._waiting.remove(req.request_id)
        self._running.append(req.request_id)
        self._reserved_pages += req.worst_case_pages

    # ------------------------------------------------------------------ choosing tokens

    def _start_decoding(self, req: _Request, logits: torch.Tensor, result: StepResult) -> None:
        """The prompt is computed: branch the request and choose its first token(s)."""
        req.state = DECODE
        seq, req.seq_id = req.seq_id, None
        if req.branches:  # resumed after a preemption: the one branch continues
            req.branches[0].seq_id = seq
            self._sample_step(req, req.branches, logits[None], result)
        elif req.params.beam_width > 1:
            req.branches = [_Branch(seq)]
            self._beam_step(req, logits[None], result)
        else:
            req.branches = [_Branch(seq)] + [_Branch(self.cache.fork(seq)) for _ in range(req.params.n - 1)]
            self._sample_step(req, req.branches, logits[None].expand(req.params.n, -1), result)

    def _sample_step(self, req: _Request, branches: list[_Branch], rows: torch.Tensor, result: StepResult) -> None:
        """Sample one token per branch from ``rows`` ``[len(branches), vocab]``."""
        tokens = sample_tokens(rows, req.params, req.generator).tolist()
        logprobs = token_logprobs(rows)
        still = []
        for i, (branch, token) in enumerate(zip(branches, tokens)):
            self._extend(branch, token, float(logprobs[i, token]), rows[i])
            reason = self._finish_reason(req, branch.tokens)
            if reason is None:
                still.append(branch)
            else:
                self.cache.detach(branch.seq_id)
                req.done.append(self._output(req, branch, reason))
        result.new_tokens[req.request_id] = tokens
        req.branches = still
        if not still:
            self._finish(req, result)

    def _beam_step(self, req: _Request, rows: torch.Tensor, result: StepResult) -> None:
        """Keep the ``beam_width`` best continuations of the live beams.

        Candidates are ranked by cumulative log-probability (ties: lower beam index, then lower
        token id); the best ``2 * beam_width`` are walked in order: a stop token ends a
        hypothesis (when ranked within ``beam_width``), anything else becomes a live beam until
        ``beam_width`` are found. Beam search ends when ``beam_width`` hypotheses ended, or at
        ``max_new_tokens``; the results are the best hypotheses by ``score``.
        """
        width = req.params.beam_width
        stops = set(req.params.stop_token_ids)
        logprobs = token_logprobs(rows)  # [beams, V]
        scores = torch.tensor([b.logprob for b in req.branches])[:, None] + logprobs  # [beams, V]
        order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:2 * width].tolist()
        vocab = rows.shape[-1]
        chosen: list[tuple[_Branch, int, float]] = []
        for rank, flat in enumerate(order):
            parent, token = req.branches[flat // vocab], flat % vocab
            lp = float(logprobs[flat // vocab, token])
            if token in stops:
                if rank < width:
                    ended = _Branch(-1, parent.tokens + [token], parent.logprob + lp, parent.logits + [rows[flat // vocab]])
                    req.done.append(self._output(req, ended, "stop"))
                continue
            chosen.append((parent, token, lp))
            if len(chosen) == width:
                break
        # new beams: the first child of a parent keeps its sequence, the others fork it
        new_branches, used = [], set()
        for parent, token, lp in chosen:
            seq = parent.seq_id if parent.seq_id not in used else self.cache.fork(parent.seq_id)
            used.add(parent.seq_id)
            child = _Branch(seq, parent.tokens + [token], parent.logprob, list(parent.logits))
            self._extend(child, None, lp, rows[req.branches.index(parent)])
            new_branches.append(child)
        for parent in req.branches:
            if parent.seq_id not in used:
                self.cache.detach(parent.seq_id)
        req.branches = new_branches
        result.new_tokens[req.request_id] = [b.tokens[-1] for b in new_branches]
        at_length = bool(new_branches) and len(new_branches[0].tokens) >= req.params.max_new_tokens
        if len(req.done) >= width or at_length or not new_branches:
            for branch in new_branches:
                self.cache.detach(branch.seq_id)
                if at_length:
                    req.done.append(self._output(req, branch, "length"))
            req.branches = []
            req.done.sort(key=lambda out: -out.score)  # stable: earlier hypotheses win ties
            del req.done[width:]
            self._finish(req, result)

    def _extend(self, branch: _Branch, token: int | None, logprob: float, logits_row: torch.Tensor) -> None:
        if token is not None:
            branch.tokens.append(token)
        branch.logprob += logprob
        if self.config.record_logits:
            branch.logits.append(logits_row.detach().float().cpu())
        self.counters["generated_tokens"] += 1

    def _finish_reason(self, req: _Request, tokens: list[int]) -> str | None:
        if tokens[-1] in req.params.stop_token_ids:
            return "stop"
        if len(tokens) >= req.params.max_new_tokens:
            return "length"
        return None

    def _output(self, req: _Request, branch: _Branch, reason: str) -> GeneratedSequence:
        score = branch.logprob
        if req.params.beam_width > 1:
            score = branch.logprob / len(branch.tokens) ** req.params.length_penalty
        logits = torch.stack(branch.logits) if self.config.record_logits else None
        return GeneratedSequence(list(branch.tokens), reason, branch.logprob, score, logits)

    def _finish(self, req: _Request, result: StepResult) -> None:
        req.state = FINISHED
        self._running.remove(req.request_id)
        self._reserved_pages -= req.worst_case_pages
        self.counters["requests_finished"] += 1
        result.finished.append(GenerationResult(req.request_id, list(req.prompt), req.done,
                                                req.num_cached_prompt_tokens))
        del self._requests[req.request_id]

    # ------------------------------------------------------------------ preemption

    def preempt(self, request_id: int) -> None:
        """Release a running single-branch request's pages and queue it first; when it runs again
        its prompt and the tokens generated so far are recomputed (prefix hits still apply).

        Raises
        ------
        EngineError
            The request is not running, or it has several branches (n > 1 or beam search).
        """
        req = self._get(request_id)
        if req.state not in (PREFILL, DECODE):
            raise EngineError(f"request {request_id} is {req.state}; only running requests can be preempted")
        if req.width > 1:
            raise EngineError(f"request {request_id} has {req.width} branches; only single-branch "
                              f"requests can be preempted (recomputing forks would change their sharing)")
        if req.state == PREFILL:
            self.cache.detach(req.seq_id)
            req.seq_id = None
        else:
            (branch,) = req.branches
            self.cache.detach(branch.seq_id)
            # recompute everything, the pending last token included; its successor is sampled next
            req.prefill_tokens = list(req.prompt) + branch.tokens
            branch.seq_id = -1
        req.num_computed = 0
        req.state = WAITING
        self._running.remove(request_id)
        self._reserved_pages -= req.worst_case_pages
        self._waiting.appendleft(request_id)
        self.counters["preemptions"] += 1

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        """Engine counters, throughput and the cache's own statistics (``cache_*`` keys)."""
        out = dict(self.counters)
        out["busy_seconds"] = self._busy_seconds
        computed = self.counters["generated_tokens"] + self.counters["prefill_tokens_computed"]
        out["tokens_per_second"] = computed / self._busy_seconds if self._busy_seconds else 0.0
        out["generated_tokens_per_second"] = (self.counters["generated_tokens"] / self._busy_seconds
                                              if self._busy_seconds else 0.0)
        out["running_requests"] = len(self._running)
        out["waiting_requests"] = len(self._waiting)
        for key, value in self.cache.stats().items():
            out[f"cache_{key}"] = value
        return out
