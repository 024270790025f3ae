"""Synthetic traces and the Azure LLM inference trace CSV reader."""

import numpy as np
import pytest

from llmds_torch.errors import ConfigError
from llmds_torch.sched import MalformedTrace, TraceFileNotFound
from llmds_torch.sched.traces import SLOClass, TraceRecord, read_azure_trace, synthetic_trace


def test_synthetic_trace_is_deterministic_bursty_and_long_tailed():
    a = synthetic_trace(4000, rate=20.0, burstiness=4.0, seed=3)
    assert a == synthetic_trace(4000, rate=20.0, burstiness=4.0, seed=3)
    assert a != synthetic_trace(4000, rate=20.0, burstiness=4.0, seed=4)
    arrivals = np.array([r.arrival_time for r in a])
    gaps = np.diff(arrivals)
    assert np.all(gaps >= 0)
    assert 1 / 20.0 * 0.8 < gaps.mean() < 1 / 20.0 * 1.25
    assert gaps.var() / gaps.mean() ** 2 > 2.5  # squared CV ~ 4: burstier than Poisson (1)
    prompts = np.array([r.prompt_len for r in a])
    assert prompts.min() >= 1 and np.percentile(prompts, 99) > 4 * np.median(prompts)  # long tail
    poisson = np.diff([r.arrival_time for r in synthetic_trace(4000, rate=20.0, burstiness=1.0, seed=3)])
    assert 0.8 < poisson.var() / poisson.mean() ** 2 < 1.25


def test_slo_classes_and_shared_prefix():
    classes = (SLOClass(0.25, 0.2, 0.05), SLOClass(0.75, 3.0, 0.3))
    trace = synthetic_trace(2000, slo_classes=classes, shared_prefix_len=64, shared_prefix_fraction=0.5, seed=1)
    tight = sum(r.ttft_slo == 0.2 for r in trace) / len(trace)
    assert 0.2 < tight < 0.3
    with_prefix = [r for r in trace if r.shared_prefix_len]
    assert 0.45 < len(with_prefix) / len(trace) < 0.55
    assert all(r.shared_prefix_len == 64 and r.prompt_len > 64 for r in with_prefix)
    with pytest.raises(ConfigError):
        synthetic_trace(10, rate=0.0)
    with pytest.raises(ConfigError):
        synthetic_trace(10, shared_prefix_fraction=1.5)


AZURE_SAMPLE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:46.0000000,879,0
"""


def test_reads_azure_csv(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text(AZURE_SAMPLE)
    trace = read_azure_trace(path, ttft_slo=1.0, tpot_slo=0.2)
    assert trace[0] == TraceRecord(0.0, 879, 1, 1.0, 0.2)  # sorted; a 0-token generation reads as 1
    assert trace[1].arrival_time == pytest.approx(0.68059)
    assert (trace[2].prompt_len, trace[2].output_len) == (396, 109)
    assert trace[2].arrival_time == pytest.approx(4.995169)
    assert len(read_azure_trace(path, limit=2)) == 2
    assert read_azure_trace(path, time_scale=2.0)[2].arrival_time == pytest.approx(4.995169 / 2)


def test_azure_reader_refuses_a_missing_file(tmp_path):
    with pytest.raises(TraceFileNotFound):
        read_azure_trace(tmp_path / "missing.csv")


@pytest.mark.parametrize("text, match", [
    ("TIME,ContextTokens\n1,2\n", "lacks columns"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,3\nyesterday,1,2\n", "line 3"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0.5,-1,2\n", "negative"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0.5,ten,2\n", "line 2"),
], ids=["header", "timestamp", "negative count", "count not a number"])
def test_azure_reader_refuses_malformed_files(tmp_path, text, match):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(MalformedTrace, match=match):
        read_azure_trace(path)
