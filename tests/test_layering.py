"""Who may import whom (docs/ARCHITECTURE.md, "Layers"): every import statement of every module of
the library, read with ``ast`` (imports inside functions included), is checked against one table.

A new part of the library (a new top-level module or subpackage of ``llmds_torch``) fails this test
until it is given its row here and in docs/ARCHITECTURE.md.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The leaves any part may use (none of them imports anything of the library).
UTILITIES = {"errors", "jit_cache", "install_hint", "progress", "heap"}

# part -> the other parts of llmds_torch it may import (besides UTILITIES; kernels not even those).
ALLOWED = {
    "errors": set(),
    "jit_cache": set(),
    "install_hint": set(),
    "progress": set(),
    "heap": set(),
    "kernels": set(),
    "kv": {"kernels"},
    "retrieval": set(),
    "sched": {"kv"},  # kv.budget's TokenBudget, and the simulator's real BlockManager
    "attention": {"kernels", "kv"},
    "models": {"kernels", "kv", "attention", "sched"},
    "integrations": {"kernels", "kv", "attention", "sched", "models"},
    "distributed": {"kernels", "kv", "attention", "models"},
    "warmup": {"retrieval", "sched", "kv"},
    "demo": {"kernels", "kv", "attention", "sched", "models", "retrieval", "warmup", "integrations"},
    "cli": {"kernels", "kv", "attention", "sched", "models", "retrieval", "warmup", "integrations", "demo",
            "distributed"},
    "llmds_torch": set(),  # the package's __init__: only the numba cache set-up (a utility)
}

# Packages that only benchmarks and tests compare against: the library never imports them.
PEERS = {"faiss", "hnswlib", "bm25s"}


def library_modules() -> dict[str, Path]:
    """Dotted module name -> file, for llmds_torch/ and kernels/ (installed as llmds_torch.kernels)."""
    modules = {}
    for folder, prefix in ((ROOT / "llmds_torch", ["llmds_torch"]), (ROOT / "kernels", ["llmds_torch", "kernels"])):
        for path in folder.rglob("*.py"):
            parts = prefix + list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    """Every module named by an import statement in ``path``, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # from pkg import submodule
    return names


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


MODULES = library_modules()


def test_every_part_has_a_row():
    unknown = sorted({part_of(m) for m in MODULES} - set(ALLOWED))
    assert not unknown, f"give {unknown} a row in ALLOWED here and in docs/ARCHITECTURE.md"


def test_no_forbidden_edge():
    forbidden = []
    for module, path in MODULES.items():
        part = part_of(module)
        allowed = ALLOWED.get(part, set()) | {part} | (UTILITIES if part != "kernels" else set())
        for name in imports_of(module, path):
            if name.split(".")[0] != "llmds_torch":
                continue
            target = part_of(name)
            if name not in MODULES and ".".join(name.split(".")[:-1]) in MODULES:
                target = part_of(".".join(name.split(".")[:-1]))  # a name imported from a module
            if name == "llmds_torch":
                target = "llmds_torch"
            if target not in allowed:
                forbidden.append(f"{module} imports {name} ({part} -> {target})")
    assert not forbidden, "forbidden imports:\n" + "\n".join(sorted(forbidden))


def test_kernels_never_import_the_library_and_only_the_shim_imports_triton():
    for module, path in MODULES.items():
        names = imports_of(module, path)
        triton = {n for n in names if n.split(".")[0] == "triton"}
        if module != "llmds_torch.kernels._triton":
            assert not triton, f"{module} imports {sorted(triton)}; take triton from llmds_torch.kernels._triton"
        if part_of(module) == "kernels":
            library = {n for n in names if n.split(".")[0] == "llmds_torch" and part_of(n) != "kernels"}
            assert not library, f"{module} imports {sorted(library)}; kernels import torch and triton only"


def test_errors_imports_nothing_and_the_library_imports_no_peer():
    assert imports_of("llmds_torch.errors", MODULES["llmds_torch.errors"]) == set()
    for module, path in MODULES.items():
        peers = {n for n in imports_of(module, path) if n.split(".")[0] in PEERS}
        assert not peers, f"{module} imports {sorted(peers)}, which only tests and benchmarks may use"


def test_the_checker_sees_a_forbidden_edge(tmp_path):
    """The parser resolves relative imports, so a planted upward import is caught."""
    path = tmp_path / "planted.py"
    path.write_text("from ..models import llama\nfrom . import prefix_index\n")
    names = imports_of("llmds_torch.kv.planted", path)
    assert "llmds_torch.models" in names and "llmds_torch.kv.prefix_index" in names
    assert "models" not in ALLOWED["kv"]
