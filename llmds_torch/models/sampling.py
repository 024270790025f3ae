"""How a request wants its tokens chosen (:class:`SamplingParams`) and the pure functions that choose
them: greedy, temperature, top-k and top-p, driven by a seeded ``torch.Generator``.

Sampling always runs on the CPU, so a seed gives the same tokens on every device. Logits are
shifted by their row maximum and divided by the temperature in fp64, so no temperature > 0 (down
to the smallest float) overflows: as the temperature falls, sampling turns into greedy.
"""

import math
from dataclasses import dataclass

import torch

from llmds_torch.errors import ConfigError
from llmds_torch.models.errors import InvalidStopTokens


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request generation settings.

    Parameters
    ----------
    max_new_tokens : int
        Generation stops after this many tokens (finish reason ``"length"``).
    temperature : float
        ``0`` picks the most likely token (greedy); otherwise logits are divided by it.
    top_k : int
        Keep only the ``top_k`` most likely tokens; ``0`` keeps all.
    top_p : float
        Keep the smallest set of most likely tokens whose probability reaches ``top_p``;
        ``1.0`` keeps all.
    n : int
        Independent samples of the same prompt (parallel sampling; the prompt's pages are shared
        through ``fork``).
    beam_width : int
        ``> 1`` runs beam search and returns that many beams; needs ``temperature == 0``, ``n == 1``.
    length_penalty : float
        Beam scores are ``sum(logprobs) / num_generated ** length_penalty``.
    stop_token_ids : tuple of int
        Generation stops after producing any of these (finish reason ``"stop"``; the stop token is
        part of the output).
    seed : int or None
        Seed of the request's own generator; ``None`` draws a fresh one.
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    beam_width: int = 1
    length_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "n", "beam_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)):
            raise ConfigError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.beam_width > 1 and (self.n > 1 or self.temperature > 0):
            raise ConfigError(f"beam search (beam_width={self.beam_width}) is deterministic: it needs "
                              f"n=1 and temperature=0, got n={self.n}, temperature={self.temperature}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")
        object.__setattr__(self, "stop_token_ids", _as_stop_tokens(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (or freshly when ``seed`` is None)."""
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def _as_stop_tokens(stop_token_ids) -> tuple[int, ...]:
    if isinstance(stop_token_ids, (str, bytes)) or not hasattr(stop_token_ids, "__iter__"):
        raise InvalidStopTokens(f"stop_token_ids must be a sequence of int token ids, got "
                                f"{type(stop_token_ids).__name__} {stop_token_ids!r}")
    out = []
    for tok in stop_token_ids:
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise InvalidStopTokens(f"stop_token_ids holds {tok!r} of type {type(tok).__name__}; "
                                    f"only int token ids are allowed (tokenize stop strings first)")
        if tok < 0:
            raise InvalidStopTokens(f"stop token ids must be >= 0, got {tok}")
        out.append(tok)
    return tuple(out)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p applied to logits; removed tokens get ``-inf``.

    Parameters
    ----------
    logits : Tensor float ``[batch, vocab]``, finite
    params : SamplingParams
        With ``temperature > 0``.

    Returns
    -------
    Tensor fp64 ``[batch, vocab]``: each row's maximum is 0, every other entry <= 0 or ``-inf``.
    """
    logits = logits.double()
    # shifted first: (x - max) / T is <= 0 for every T > 0, so it cannot overflow to +inf
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
        # drop a token when the tokens before it already reach top_p; the first always stays
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Choose one token per row.

    Parameters
    ----------
    logits : Tensor ``[batch, vocab]``, any device and float dtype
    params : SamplingParams
    generator : torch.Generator on the CPU, or None for greedy

    Returns
    -------
    Tensor int64 ``[batch]`` on the CPU. Greedy picks the lowest id among equal maxima.
    """
    logits = logits.detach().float().cpu()
    if params.greedy:
        return logits.argmax(dim=-1)
    if not torch.isfinite(logits).all():
        raise ValueError("logits to sample from must be finite")
    probs = filter_logits(logits, params).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in fp32 on the CPU: ``[batch, vocab]`` -> ``[batch, vocab]``."""
    return torch.log_softmax(logits.detach().float().cpu(), dim=-1)
