"""Request traces for the simulator: a synthetic generator and a reader for the Azure LLM
inference trace CSV (columns ``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from llmds_torch.errors import ConfigError
from llmds_torch.sched.errors import MalformedTrace, TraceFileNotFound


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One request of a trace.

    Attributes
    ----------
    arrival_time : float
        Seconds since the trace start.
    prompt_len, output_len : int
        Prompt tokens (including any shared prefix) and tokens to generate (>= 1 each).
    ttft_slo, tpot_slo : float | None
        Per-request SLOs in seconds (``None``: the scheduler's defaults).
    shared_prefix_len : int
        Leading prompt tokens that are the trace's shared system prompt (0: none).
    """

    arrival_time: float
    prompt_len: int
    output_len: int
    ttft_slo: float | None = None
    tpot_slo: float | None = None
    shared_prefix_len: int = 0


@dataclass(frozen=True, slots=True)
class SLOClass:
    """A share of the traffic with common SLOs, e.g. interactive chat vs batch summarisation."""

    fraction: float
    ttft_slo: float
    tpot_slo: float


DEFAULT_SLO_CLASSES = (SLOClass(0.4, ttft_slo=0.5, tpot_slo=0.1), SLOClass(0.6, ttft_slo=5.0, tpot_slo=0.5))


def _lognormal_lengths(rng: np.random.Generator, n: int, median: float, sigma: float, low: int, high: int) -> np.ndarray:
    values = rng.lognormal(mean=math.log(median), sigma=sigma, size=n)
    return np.clip(np.rint(values), low, high).astype(np.int64)


def synthetic_trace(num_requests: int, *, rate: float = 10.0, burstiness: float = 4.0,
                    prompt_median: float = 256.0, prompt_sigma: float = 1.0, max_prompt_len: int = 4096,
                    output_median: float = 64.0, output_sigma: float = 1.0, max_output_len: int = 1024,
                    slo_classes: Sequence[SLOClass] = DEFAULT_SLO_CLASSES,
                    shared_prefix_len: int = 0, shared_prefix_fraction: float = 0.0,
                    seed: int = 0) -> list[TraceRecord]:
    """A bursty, long-tailed synthetic trace; the same arguments give the same trace.

    Parameters
    ----------
    num_requests : int
    rate : float
        Mean arrivals per second.
    burstiness : float
        Squared coefficient of variation of the inter-arrival gaps, which are Gamma distributed
        with shape ``1 / burstiness`` and mean ``1 / rate``: 1 is Poisson, larger is burstier.
    prompt_median, prompt_sigma, max_prompt_len : float, float, int
        Log-normal prompt lengths (median and log-space sigma), clipped to ``[1, max_prompt_len]``.
    output_median, output_sigma, max_output_len : float, float, int
        The same for output lengths.
    slo_classes : sequence of SLOClass
        Each request draws a class with probability proportional to ``fraction``.
    shared_prefix_len, shared_prefix_fraction : int, float
        That fraction of requests start with the same ``shared_prefix_len``-token system prompt
        (their prompt is that prefix plus their own tokens), so prefix caching shows.
    seed : int

    Returns
    -------
    list[TraceRecord]
        Sorted by arrival time, starting at the first gap.
    """
    if num_requests < 0:
        raise ConfigError(f"num_requests must be >= 0, got {num_requests}")
    if not rate > 0 or not burstiness > 0:
        raise ConfigError(f"rate and burstiness must be > 0, got {rate} and {burstiness}")
    if not slo_classes or any(c.fraction < 0 for c in slo_classes) or sum(c.fraction for c in slo_classes) <= 0:
        raise ConfigError("slo_classes must be non-empty with non-negative fractions summing to > 0")
    if shared_prefix_len < 0 or not 0.0 <= shared_prefix_fraction <= 1.0:
        raise ConfigError("shared_prefix_len must be >= 0 and shared_prefix_fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    shape = 1.0 / burstiness
    gaps = rng.gamma(shape, scale=1.0 / (rate * shape), size=num_requests)
    arrivals = np.cumsum(gaps)
    prompts = _lognormal_lengths(rng, num_requests, prompt_median, prompt_sigma, 1, max_prompt_len)
    outputs = _lognormal_lengths(rng, num_requests, output_median, output_sigma, 1, max_output_len)
    weights = np.array([c.fraction for c in slo_classes], dtype=np.float64)
    classes = rng.choice(len(slo_classes), size=num_requests, p=weights / weights.sum())
    shares_prefix = rng.random(num_requests) < shared_prefix_fraction
    records = []
    for i in range(num_requests):
        prefix = shared_prefix_len if (shared_prefix_len and shares_prefix[i]) else 0
        cls = slo_classes[classes[i]]
        records.append(TraceRecord(float(arrivals[i]), int(prompts[i]) + prefix, int(outputs[i]),
                                   ttft_slo=cls.ttft_slo, tpot_slo=cls.tpot_slo, shared_prefix_len=prefix))
    return records


def _parse_timestamp(text: str) -> float:
    """Seconds (float) from a number or a ``YYYY-MM-DD HH:MM:SS[.fraction]`` timestamp."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    base, _, fraction = text.partition(".")
    moment = datetime.fromisoformat(base)  # ValueError when malformed
    seconds = moment.timestamp() if moment.tzinfo else (moment - datetime(1970, 1, 1)).total_seconds()
    if fraction:
        digits = fraction.rstrip("Z")
        if not digits.isdigit():
            raise ValueError(f"bad fractional seconds {fraction!r}")
        seconds += float("0." + digits)
    return seconds


AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_azure_trace(path: str | os.PathLike, *, ttft_slo: float | None = None, tpot_slo: float | None = None,
                     limit: int | None = None, time_scale: float = 1.0) -> list[TraceRecord]:
    """Read an Azure LLM inference trace CSV (e.g. ``AzureLLMInferenceTrace_conv.csv``).

    Parameters
    ----------
    path : str | PathLike
        A CSV with a header holding at least ``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``;
        timestamps are ``YYYY-MM-DD HH:MM:SS.fffffff`` or plain seconds.
    ttft_slo, tpot_slo : float | None
        SLOs given to every record.
    limit : int | None
        Read only the first ``limit`` data rows.
    time_scale : float
        Arrival times are divided by it (2.0 replays twice as fast).

    Returns
    -------
    list[TraceRecord]
        Arrival times in seconds since the earliest timestamp, sorted; a zero token count is
        read as 1 (the trace logs some empty generations; every request computes at least one).

    Raises
    ------
    TraceFileNotFound
        ``path`` does not exist.
    MalformedTrace
        A missing column, a non-numeric or negative count, or an unparsable timestamp (the
        message names the line).
    """
    if not time_scale > 0:
        raise ConfigError(f"time_scale must be > 0, got {time_scale}")
    if not os.path.isfile(path):
        raise TraceFileNotFound(f"trace file {os.fspath(path)!r} does not exist")
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in AZURE_COLUMNS if c not in header]
        if missing:
            raise MalformedTrace(f"{os.fspath(path)}: header {header} lacks columns {missing}; "
                                 f"need {list(AZURE_COLUMNS)}")
        reader.fieldnames = header
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            line = reader.line_num
            try:
                stamp = _parse_timestamp(row["TIMESTAMP"] or "")
                context = int(row["ContextTokens"])
                generated = int(row["GeneratedTokens"])
            except (TypeError, ValueError) as err:
                raise MalformedTrace(f"{os.fspath(path)} line {line}: cannot parse {dict(row)} ({err})") from None
            if context < 0 or generated < 0:
                raise MalformedTrace(f"{os.fspath(path)} line {line}: negative token count in {dict(row)}")
            rows.append((stamp, max(context, 1), max(generated, 1)))
    if not rows:
        return []
    rows.sort(key=lambda r: r[0])
    start = rows[0][0]
    return [TraceRecord((stamp - start) / time_scale, context, generated, ttft_slo=ttft_slo, tpot_slo=tpot_slo)
            for stamp, context, generated in rows]
