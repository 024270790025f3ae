"""Every package's ``__all__`` is its curated public API: each name imports, none is private or a
module, the package's errors are all there, the spec's public names are reachable from their
package, every error of the library lives in an errors module and derives from ``LLMDSError``
(the kernels, which never import ``llmds_torch``, excepted), and no import alias or package
attribute hides a package or module name."""

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import types
from pathlib import Path

import pytest

import llmds_torch
from llmds_torch.errors import LLMDSError

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ["llmds_torch", "llmds_torch.kv", "llmds_torch.sched", "llmds_torch.retrieval", "llmds_torch.models",
            "llmds_torch.integrations", "llmds_torch.distributed", "llmds_torch.kernels"]

# package -> the module holding its errors (the kernels keep theirs beside the checks that raise them)
ERRORS_MODULE = {package: f"{package}.errors" for package in PACKAGES}
ERRORS_MODULE["llmds_torch.kernels"] = None

# The names the spec makes a public contract, and where a user finds them.
SPEC_NAMES = {
    "llmds_torch.kv": ["KVCacheConfig", "PagedKVCache", "BlockManager", "TokenBudget", "OutOfPages",
                       "UnknownSequence", "InvalidTokenIds", "ContextWindowExceeded"],
    "llmds_torch.attention": ["paged_attention", "AttentionMetadata"],
    "llmds_torch.models": ["LlamaModel", "LlamaConfig", "load_hf_model", "GenerationEngine", "SamplingParams",
                           "GenerationResult", "CausalLM", "ModelRunner"],
    "llmds_torch.sched": ["IndexedHeap", "AdmissionController", "Scheduler", "SchedulerConfig", "Request", "Batch",
                          "StepResult", "CacheProtocol", "simulate", "synthetic_trace", "read_azure_trace"],
    "llmds_torch.retrieval": ["HNSW", "FlatIndex", "InvertedIndex", "BM25Params", "fuse", "convex_combination",
                              "reciprocal_rank_fusion", "distribution_based_fusion", "top_k", "CountMinSketch",
                              "HotQueryCache", "RetrievalPipeline", "CorruptIndexFile", "InvalidIds", "DuplicateIds",
                              "UnknownIds"],
    "llmds_torch.distributed": ["init_tensor_parallel", "start_tensor_parallel", "TensorParallelLlama"],
    "llmds_torch.kernels": ["resolve_backend", "KernelInputError", "TritonUnavailable"],
    "llmds_torch": ["LLMDSError", "ConfigError", "OutOfPages"],
}
# kernels: one op per module, imported from its module (the package never rebinds a module name)
KERNEL_OPS = {"kv_write": ["kv_write"], "page_copy": ["page_copy"], "page_move": ["page_move"],
              "paged_attention": ["paged_attention_decode", "paged_attention_prefill"],
              "reference": ["kv_write_reference", "page_copy_reference", "paged_attention_decode_reference",
                            "paged_attention_prefill_reference"], "warm_up": ["warm_up"]}


def _library_modules() -> list[str]:
    """Every module of the library that imports here (those of a missing optional extra skipped)."""
    names = []
    for info in pkgutil.walk_packages(llmds_torch.__path__, "llmds_torch."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # e.g. integrations.transformers without the hf extra
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports_and_is_public(package):
    module = importlib.import_module(package)
    exported = module.__all__
    assert len(set(exported)) == len(exported), f"{package}.__all__ repeats a name"
    namespace = {}
    exec(f"from {package} import *", namespace)  # noqa: S102
    for name in exported:
        assert name in namespace, f"{package}.__all__ names {name!r}, which does not import"
        assert not name.startswith("_") or name == "__version__", f"{package} exports the private {name!r}"
        assert not isinstance(namespace[name], types.ModuleType), f"{package} exports the module {name!r}"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_exports_all_its_errors(package):
    module = importlib.import_module(package)
    errors_name = ERRORS_MODULE[package]
    if errors_name is None:
        errors = {name for name, obj in vars(module).items() if inspect.isclass(obj) and issubclass(obj, Exception)}
        assert errors == {"KernelInputError", "TritonUnavailable"}
    else:
        errors_module = importlib.import_module(errors_name)
        errors = set(errors_module.__all__)
        defined = {name for name, obj in vars(errors_module).items()
                   if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors_name}
        assert defined <= errors, f"{errors_name}.__all__ lacks {sorted(defined - errors)}"
    missing = errors - set(module.__all__)
    assert not missing, f"{package}.__all__ lacks its errors {sorted(missing)}"


@pytest.mark.parametrize("package", SPEC_NAMES)
def test_spec_names_are_exported_by_their_package(package):
    module = importlib.import_module(package)
    missing = [name for name in SPEC_NAMES[package] if name not in module.__all__ or not hasattr(module, name)]
    assert not missing, f"{package} does not export {missing}"


def test_kernel_ops_are_reached_through_their_modules():
    import llmds_torch.kernels as kernels_package
    for module_name, functions in KERNEL_OPS.items():
        module = importlib.import_module(f"llmds_torch.kernels.{module_name}")
        assert getattr(kernels_package, module_name) is module
        for function in functions:
            assert callable(getattr(module, function)), f"llmds_torch.kernels.{module_name}.{function}"


def test_paged_causal_lm_is_reachable():
    pytest.importorskip("transformers")
    from llmds_torch.integrations.transformers import PagedCausalLM
    assert callable(PagedCausalLM.from_pretrained)


def test_every_error_lives_in_an_errors_module_and_derives_from_llmds_error():
    misplaced, rootless = [], []
    for name in _library_modules():
        module = importlib.import_module(name)
        for class_name, obj in vars(module).items():
            if not (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name):
                continue
            if class_name.startswith("_"):
                continue  # a private control-flow signal that never leaves its module
            if name.startswith("llmds_torch.kernels"):
                continue  # kernels never import llmds_torch; KernelInputError is their named error
            if not (name.endswith(".errors") or name == "llmds_torch.errors" or name == "llmds_torch.attention"):
                misplaced.append(f"{name}.{class_name}")
            if not issubclass(obj, LLMDSError):
                rootless.append(f"{name}.{class_name}")
    assert not misplaced, f"errors defined outside an errors module: {misplaced}"
    assert not rootless, f"errors not derived from LLMDSError: {rootless}"


def test_old_import_paths_of_moved_errors_still_work():
    from llmds_torch.integrations.errors import MissingTokenizer, PagedAttentionUnavailable
    from llmds_torch.integrations.hf_attention import PagedAttentionUnavailable as old_unavailable
    from llmds_torch.kv import errors as kv_errors
    from llmds_torch.kv.block_manager import InvariantViolation
    from llmds_torch.kv.transaction import TransactionError
    from llmds_torch.models import errors as models_errors
    from llmds_torch.models.config import UnsupportedArchitecture
    from llmds_torch.models.engine import EngineError
    from llmds_torch.models.hf_loader import CheckpointError, MissingOptionalDependency
    from llmds_torch.models.sampling import InvalidStopTokens
    from llmds_torch.retrieval.codec import UnsortedIds
    from llmds_torch.retrieval.errors import UnsortedIds as new_unsorted
    assert (InvariantViolation, TransactionError) == (kv_errors.InvariantViolation, kv_errors.TransactionError)
    assert issubclass(InvariantViolation, AssertionError) and issubclass(InvariantViolation, LLMDSError)
    assert (UnsupportedArchitecture, EngineError, CheckpointError, MissingOptionalDependency, InvalidStopTokens) == (
        models_errors.UnsupportedArchitecture, models_errors.EngineError, models_errors.CheckpointError,
        models_errors.MissingOptionalDependency, models_errors.InvalidStopTokens)
    assert old_unavailable is PagedAttentionUnavailable and UnsortedIds is new_unsorted
    if importlib.util.find_spec("transformers") is not None:
        from llmds_torch.integrations.transformers import MissingTokenizer as old_missing
        assert old_missing is MissingTokenizer


PACKAGE_NAMES = {"llmds_torch", "kv", "sched", "retrieval", "models", "integrations", "distributed", "kernels",
                 "attention", "errors"}


def test_no_import_alias_hides_a_package_name():
    offenders = []
    for folder in (ROOT / "llmds_torch", ROOT / "kernels"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    offenders += [f"{path.relative_to(ROOT)}: {alias.name} as {alias.asname}"
                                  for alias in node.names if alias.asname in PACKAGE_NAMES]
    assert not offenders, f"aliases named like a package: {offenders}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_rebinds_a_submodule_name(package):
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        bound = vars(module).get(info.name)
        if bound is not None:
            assert isinstance(bound, types.ModuleType) and bound.__name__ == f"{package}.{info.name}", (
                f"{package}.{info.name} is bound to {bound!r}, not to its module")
