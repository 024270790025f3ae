"""`llmds simulate`: every request counts, the model and SLOs are shown and settable, bad traces
are refused with the row named, and no trace can make the replay spin."""

import json
import math

import pytest

from llmds_torch.cli import main
from llmds_torch.sched import MalformedTrace, SchedulerConfig
from llmds_torch.sched.simulator import simulate
from llmds_torch.sched.traces import TraceRecord, parse_timestamp, read_azure_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, body, name="trace.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def test_refused_requests_count_as_missed(tmp_path, capsys):
    path = write(tmp_path, "0.0,100,4\n0.5,100000,4\n")  # the second can never fit 64 pages
    assert main(["simulate", str(path), "--pages", "64", "--policy", "fcfs", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["fcfs"]
    assert summary["finished"] == 1 and summary["refused_by_reason"] == {"too_large": 1}
    assert summary["slo_attainment"] == pytest.approx(0.5)
    assert summary["goodput"] == pytest.approx(1 / summary["sim_seconds"])


def test_prints_cost_model_and_slos_and_takes_them_as_options(tmp_path, capsys):
    path = write(tmp_path, "".join(f"{i * 0.1},{50 + i},{3 + i % 4}\n" for i in range(20)))
    assert main(["simulate", str(path), "--policy", "slo", "--pages", "128", "--step-base", "0.01",
                 "--step-per-token", "0.001", "--step-per-kv-token", "0", "--ttft-slo", "0.3",
                 "--tpot-slo", "0.05", "--time-scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "0.01 s + 0.001 s x tokens computed + 0 s x KV tokens read" in out
    assert "TTFT <= 0.3 s, TPOT <= 0.05 s" in out and "time scale 2" in out
    assert "goodput" in out and "refused" in out
    assert main(["simulate", str(path), "--policy", "slo", "--pages", "128", "--json", "--step-base", "0.01",
                 "--time-scale", "2"]) == 0
    result = json.loads(capsys.readouterr().out)["slo"]
    assert result["setup"]["step_cost"]["base_seconds"] == 0.01 and result["setup"]["time_scale"] == 2
    assert result["sim_seconds"] > 1.9 * 0.1 / 2 * 19 / 2  # arrivals compressed but every step costs 0.01 s


def test_every_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for option in ("--policy", "--pages", "--page-size", "--max-batch-size", "--max-batch-tokens", "--limit",
                   "--time-scale", "--ttft-slo", "--tpot-slo", "--step-base", "--step-per-token",
                   "--step-per-kv-token", "--shed-late", "--no-progress", "--json"):
        block = out.split(option, 1)[1].split("\n  -", 1)[0]
        assert "default" in block or len(block.split()) > 3, option


def test_progress_bar_on_stderr_for_long_traces(tmp_path, capsys):
    path = write(tmp_path, "".join(f"{i * 0.02},{20 + i % 50},{2 + i % 3}\n" for i in range(600)))
    assert main(["simulate", str(path), "--policy", "fcfs", "--pages", "512"]) == 0
    captured = capsys.readouterr()
    assert "fcfs:" in captured.err and "/600" in captured.err  # tqdm's bar, not on stdout
    assert "/600" not in captured.out
    assert main(["simulate", str(path), "--policy", "fcfs", "--pages", "512", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("text, seconds", [
    ("2023-11-16 18:15:46.709448+00:00", 1700158546.709448),
    ("2023-11-16 18:15:46.6805900", 1700158546.68059),
    ("2023-11-16T19:15:46.5+01:00", 1700158546.5),
    ("2023-11-16 18:15:46Z", 1700158546.0),
    ("2023-11-16 18:15:46", 1700158546.0),
    ("12.25", 12.25),
    (" 7 ", 7.0),
])
def test_timestamps(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds, abs=1e-6)


def test_offset_timestamps_read_in_a_trace(tmp_path):
    path = write(tmp_path, "2023-11-16 18:15:46.709448+00:00,10,2\n2023-11-16 19:15:47.709448+01:00,10,2\n")
    trace = read_azure_trace(path)
    assert [r.arrival_time for r in trace] == pytest.approx([0.0, 1.0])


@pytest.mark.parametrize("row", ["nan,10,2", "inf,10,2", "-inf,10,2", "2023-13-01 00:00:00,10,2",
                                 "12,ten,2", "12,10,", "12,-1,2"])
def test_malformed_rows_are_refused_with_the_row_named(tmp_path, row):
    path = write(tmp_path, f"0.5,10,2\n{row}\n")
    with pytest.raises(MalformedTrace, match="line 3"):
        read_azure_trace(path)


def test_undecodable_file_is_refused_with_the_row_named(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "0.5,10,2\n1.0,12,3\n").encode() + "2.0,5,1 caf\u00e9\n".encode("latin-1"))
    with pytest.raises(MalformedTrace, match="not UTF-8"):
        read_azure_trace(path)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "UTF-8" in err and "line" in err and "\n" not in err and "Traceback" not in err


def test_non_finite_records_cannot_be_built():
    for bad in (math.nan, math.inf):
        with pytest.raises(MalformedTrace):
            TraceRecord(bad, 10, 2)
    with pytest.raises(MalformedTrace):
        TraceRecord(0.0, 10, 2, ttft_slo=math.nan)


def test_a_trace_that_cannot_advance_time_stops_instead_of_spinning():
    record = TraceRecord(0.0, 10, 2)
    object.__setattr__(record, "arrival_time", math.nan)  # bypass validation, as a buggy reader could
    with pytest.raises(RuntimeError, match="advance"):
        simulate([TraceRecord(0.0, 10, 2), record], config=SchedulerConfig(), num_pages=16, page_size=4)
    with pytest.raises(RuntimeError, match="max_steps"):  # empty steps count too
        simulate([TraceRecord(0.0, 10, 2), TraceRecord(50.0, 10, 2)], config=SchedulerConfig(), num_pages=16,
                 page_size=4, max_steps=3)
