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

    def __post_init__(self):
        if isinstance(self.arrival_time, bool) or not math.isfinite(self.arrival_time):
            raise MalformedTrace(f"arrival_time must be a finite number of seconds, got {self.arrival_time!r}")
        if self.prompt_len < 1 or self.output_len < 1:
            raise MalformedTrace(f"prompt_len and output_len must be >= 1, got {self.prompt_len}, {self.output_len}")
        if not 0 <= self.shared_prefix_len <= self.prompt_len:
            raise MalformedTrace(f"shared_prefix_len must lie in [0, prompt_len={self.prompt_len}], "
                                 f"got {self.shared_prefix_len}")
        for name in ("ttft_slo", "tpot_slo"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < math.inf):
                raise MalformedTrace(f"{name} must be a finite number >= 0 or None, got {value!r}")


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


def merge_traces(*traces: Sequence[TraceRecord]) -> list[TraceRecord]:
    """One trace holding every record of ``traces``, sorted by arrival time (stable)."""
    return sorted((r for trace in traces for r in trace), key=lambda r: r.arrival_time)


INTERACTIVE = SLOClass(1.0, ttft_slo=0.5, tpot_slo=0.1)
BATCH = SLOClass(1.0, ttft_slo=10.0, tpot_slo=0.5)
SUITE_REGIMES = ("light", "heavy_single_class", "mixed_classes", "long_shared_prefix", "overload_bursts")


def trace_suite(scale: float = 1.0, seed: int = 0) -> dict[str, list[TraceRecord]]:
    """Seeded traces of five load regimes, for comparing policies (sizes times ``scale``).

    ``light``               1,000 requests at 4/s, two SLO classes (interactive / batch): the
                            device keeps up; every policy should meet nearly every SLO.
    ``heavy_single_class``  3,000 requests at 25/s, bursty, one class (TTFT 2 s, TPOT 0.1 s):
                            queues build up during bursts.
    ``mixed_classes``       short interactive chat (TTFT 0.5 s, TPOT 0.1 s) and long batch
                            summaries (TTFT 10 s, TPOT 0.5 s) interleaved, 2,000 requests.
    ``long_shared_prefix``  1,000 long prompts at 20/s (median 1,536 tokens), 80 % behind one
                            1,024-token system prompt, TTFT 3 s, TPOT 0.2 s.
    ``overload_bursts``     2,000 requests at 60/s in heavy bursts (squared CV 16), well past
                            capacity, one class (TTFT 1 s, TPOT 0.2 s).

    The rates are chosen for the simulator's default :class:`StepCostModel` and a scheduler with
    ``max_batch_size=128, max_batch_tokens=2048`` on 1,024 pages of 16 tokens.
    """
    def n(count: int) -> int:
        return max(1, int(round(count * scale)))

    interactive = dict(prompt_median=128.0, output_median=48.0, max_output_len=256, slo_classes=(INTERACTIVE,))
    batch = dict(prompt_median=1024.0, output_median=256.0, max_output_len=1024, slo_classes=(BATCH,))
    return {
        "light": synthetic_trace(n(1000), rate=4.0, burstiness=1.0, seed=seed),
        "heavy_single_class": synthetic_trace(n(3000), rate=25.0, burstiness=4.0, seed=seed + 1,
                                              slo_classes=(SLOClass(1.0, ttft_slo=2.0, tpot_slo=0.1),)),
        "mixed_classes": merge_traces(
            synthetic_trace(n(1400), rate=14.0, burstiness=4.0, seed=seed + 2, **interactive),
            synthetic_trace(n(600), rate=6.0, burstiness=4.0, seed=seed + 3, **batch)),
        "long_shared_prefix": synthetic_trace(n(1000), rate=20.0, burstiness=2.0, prompt_median=512.0,
                                              prompt_sigma=0.5, max_prompt_len=3072, seed=seed + 4,
                                              shared_prefix_len=1024, shared_prefix_fraction=0.8,
                                              slo_classes=(SLOClass(1.0, ttft_slo=3.0, tpot_slo=0.2),)),
        "overload_bursts": synthetic_trace(n(2000), rate=60.0, burstiness=16.0, seed=seed + 5,
                                           slo_classes=(SLOClass(1.0, ttft_slo=1.0, tpot_slo=0.2),)),
    }


_EPOCH = datetime(1970, 1, 1)


def parse_timestamp(text: str) -> float:
    """Seconds from plain seconds (``12.5``) or an ISO 8601 timestamp as
    :meth:`datetime.fromisoformat` reads it (``2023-11-16 18:15:46.6805900``, a ``T`` separator,
    a UTC offset ``+00:00`` or ``Z``; fractions past microseconds are truncated). A timestamp
    without an offset counts as UTC. Raises ``ValueError`` when malformed or not finite."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text)  # ValueError when malformed
        seconds = moment.timestamp() if moment.tzinfo else (moment - _EPOCH).total_seconds()
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp {text!r} is not finite")
    return seconds


AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _parse_row(row: dict, where: str) -> tuple[float, int, int]:
    """``(seconds, context tokens, generated tokens)`` of one CSV row; ``where`` names it."""
    try:
        stamp = parse_timestamp(row["TIMESTAMP"] or "")
        context = int(row["ContextTokens"])
        generated = int(row["GeneratedTokens"])
    except (TypeError, ValueError) as err:
        raise MalformedTrace(f"{where}: cannot parse {dict(row)} ({err})") from None
    if context < 0 or generated < 0:
        raise MalformedTrace(f"{where}: negative token count in {dict(row)}")
    return stamp, max(context, 1), max(generated, 1)


def read_azure_trace(path: str | os.PathLike, *, ttft_slo: float | None = None, tpot_slo: float | None = None,
                     limit: int | None = None, time_scale: float = 1.0) -> list[TraceRecord]:
    """Read an Azure LLM inference trace CSV (e.g. ``AzureLLMInferenceTrace_conv.csv``).

    Parameters
    ----------
    path : str | PathLike
        A UTF-8 CSV with a header holding at least ``TIMESTAMP``, ``ContextTokens``,
        ``GeneratedTokens``; timestamps as :func:`parse_timestamp` reads them.
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
        A missing column, a non-numeric or negative count, an unparsable or non-finite
        timestamp, or bytes that are not UTF-8 (the message names the line).
    """
    if not 0 < time_scale < math.inf:
        raise ConfigError(f"time_scale must be > 0, got {time_scale}")
    if not os.path.isfile(path):
        raise TraceFileNotFound(f"trace file {os.fspath(path)!r} does not exist")
    name = os.fspath(path)
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in AZURE_COLUMNS if c not in header]
            if missing:
                raise MalformedTrace(f"{name}: header {header} lacks columns {missing}; need {list(AZURE_COLUMNS)}")
            reader.fieldnames = header
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(_parse_row(row, f"{name} line {reader.line_num}"))
        except UnicodeDecodeError as err:
            raise MalformedTrace(f"{name} line {reader.line_num + 1}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start} of the block read)") from None
    if not rows:
        return []
    rows.sort(key=lambda r: r[0])
    start = rows[0][0]
    return [TraceRecord((stamp - start) / time_scale, context, generated, ttft_slo=ttft_slo, tpot_slo=tpot_slo)
            for stamp, context, generated in rows]
