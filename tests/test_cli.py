"""The ``llmds`` command as a user meets it: help for every option, the benchmark list, ``--plot``
refused before any work when matplotlib is missing, install hints that fit the install, and
``llmds warmup``."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from llmds_torch import cli, install_hint
from llmds_torch.cli import benchmark_summaries, build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", ["demo", "warmup", "bench"])
def test_every_option_has_help(name):
    parser = subcommands()[name]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"llmds {name}: {action.dest} has no help text"


def test_bench_without_a_name_lists_every_benchmark_with_one_line(capsys):
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    summaries = benchmark_summaries()
    assert {"ann", "sparse", "sched", "kv_manager"} <= set(summaries)
    assert all(line for line in summaries.values()), "a benchmark has no docstring"
    for name, line in summaries.items():
        assert any(row.split()[0] == name and line in row for row in out.splitlines()[1:])
    assert len(out.strip().splitlines()) == len(summaries) + 1


def test_bench_help_lists_the_benchmarks(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in benchmark_summaries())


def test_plot_without_matplotlib_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    import llmds_torch.demo as demo

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the demo ran although --plot cannot be honoured")

    monkeypatch.setattr(demo, "run_demo", must_not_run)
    assert main(["demo", "--plot", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "matplotlib" in err and "[compare]" in err and "\n" not in err


def test_plot_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--plot", str(tmp_path / "no" / "such" / "m.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_install_hint_for_a_checkout_and_for_a_wheel(monkeypatch, tmp_path):
    assert install_hint.source_checkout() is not None  # the tests run from the repository
    assert install_hint.install_hint("compare").startswith('pip install -e ".[compare]"')
    monkeypatch.setattr(install_hint, "source_checkout", lambda: None)
    assert install_hint.install_hint("compare") == 'pip install "llmds-torch[compare]"'
    assert cli.install_hint is install_hint.install_hint


def test_warmup_compiles_every_target_and_says_where_the_cache_is(capsys):
    from llmds_torch.warmup import TARGETS

    assert main(["warmup", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name, _ in TARGETS)
    assert "cached in" in out


PROBE = """
import json, sys
from numba.core.registry import CPUDispatcher

def compiled_signatures():
    counts = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("llmds_torch") and module is not None:
            for attr, value in vars(module).items():
                if isinstance(value, CPUDispatcher):
                    counts[f"{module_name}.{attr}"] = len(value.overloads)
    return counts

from llmds_torch.retrieval import RetrievalPipeline, default_embedder, stdlib_documents
from llmds_torch.sched import IndexedHeap
from llmds_torch.warmup import DEMO_TARGETS, warmup

warmup(DEMO_TARGETS, progress=False)
before = compiled_signatures()
pipeline = RetrievalPipeline(embedder=default_embedder())
docs = stdlib_documents(max_documents=80)
pipeline.add([f"{title}: {text}" for title, text in docs])
for title, _ in docs[:5]:
    pipeline.query(f"What does {title} do?", k=3)
heap = IndexedHeap()
for i in range(20):
    heap.push(i, float(i % 7))
heap.update(4, 0.5)
while len(heap):
    heap.pop()
from llmds_torch.kv.block_manager import BlockManager
manager = BlockManager(64, 16, num_layers=2)
seq = manager.attach(list(range(1, 40)))
manager.mark_written(seq)
child = manager.fork(seq)
manager.append(child, [5])
manager.detach(child)
manager.detach(seq)
after = compiled_signatures()
print(json.dumps({"before": before, "after": after}))
"""


def test_after_the_demos_warmup_its_path_compiles_nothing_new():
    """In a fresh process: the demo's warm-up compiles (or loads) every loop that indexing,
    querying and the KV cache's attach / fork / detach then reach, so the first real call compiles
    nothing."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = counts["before"], counts["after"]
    assert sum(before.values()) > 10
    grown = {name: (before.get(name, 0), n) for name, n in after.items() if n > before.get(name, 0)}
    assert not grown, f"compiled on first real use despite the warm-up: {grown}"


COLD_PARALLEL = """
import json
import os
from llmds_torch.warmup import kernels_cached, warmup
from llmds_torch.jit_cache import numba_cache_dir
names = ("scheduler heap", "KV page release", "count-min sketch")
assert not kernels_cached()
seconds = warmup(names, progress=False, processes=2)
import sys
from numba.core.registry import CPUDispatcher
misses = sum(sum(value.stats.cache_misses.values()) for name, module in list(sys.modules.items())
             if name.startswith("llmds_torch") and module is not None
             for value in vars(module).values() if isinstance(value, CPUDispatcher))
print(json.dumps({"names": list(seconds), "index_files": len(list(numba_cache_dir().rglob("*.nbi"))),
                  "compiled_here": misses}))
"""


def test_a_cold_warmup_compiles_in_worker_processes_then_loads_here(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["LLMDS_TORCH_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", COLD_PARALLEL], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["names"] == ["scheduler heap", "KV page release", "count-min sketch"]  # in target order
    assert result["index_files"] > 0
    assert result["compiled_here"] == 0  # the workers compiled; this process only loaded


def test_workers_that_cannot_start_leave_the_compile_to_the_caller(monkeypatch):
    from llmds_torch import warmup as warmup_module

    class NoPool:
        def __init__(self, *args, **kwargs):
            raise OSError("no processes here")

    class Bar:
        def set_postfix_str(self, text):
            pass

    monkeypatch.setattr(warmup_module, "ProcessPoolExecutor", NoPool)
    assert warmup_module._compile_in_workers(["scheduler heap"], 2, Bar()) == {}
