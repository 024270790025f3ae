"""A corpus of real text that needs no download: the Python standard library's own docstrings.

Reads the stdlib source files with ``ast`` (nothing is imported or executed) and yields module,
class and function docstrings as ``(title, text)`` pairs, titles like ``json.decoder.JSONDecoder.decode``.
Files are visited in sorted path order and definitions in source order, so the corpus is the same
on every run of one Python version.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

from llmds_torch.errors import ConfigError

SKIPPED_PARTS = frozenset(
    ["test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
     "dist-packages", "__pycache__", "__phello__"]
)


def stdlib_root() -> Path:
    """The folder holding the standard library's ``.py`` files."""
    return Path(sysconfig.get_paths()["stdlib"])


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings(tree: ast.Module, module: str):
    doc = ast.get_docstring(tree)
    if doc:
        yield module, doc
    stack = [(module, node) for node in tree.body]
    while stack:
        prefix, node = stack.pop(0)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            title = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                yield title, doc
            if isinstance(node, ast.ClassDef):
                stack[0:0] = [(title, child) for child in node.body]


def stdlib_documents(max_documents: int | None = None, min_chars: int = 40, max_chars: int = 4000,
                     root: Path | None = None) -> list[tuple[str, str]]:
    """Docstrings of the standard library as ``(title, text)`` documents.

    Parameters
    ----------
    max_documents : int, optional
        Stop after this many documents (default: all, several thousand).
    min_chars : int
        Skip docstrings shorter than this (default 40).
    max_chars : int
        Truncate longer docstrings to this many characters (default 4000).
    root : Path, optional
        The stdlib folder (default :func:`stdlib_root`).

    Returns
    -------
    list of (str, str), in sorted file order, then source order.
    """
    if max_documents is not None and (not isinstance(max_documents, int) or max_documents < 1):
        raise ConfigError(f"max_documents must be None or an int >= 1; got {max_documents!r}")
    root = stdlib_root() if root is None else Path(root)
    documents: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for title, text in _docstrings(tree, _module_name(path, root)):
            if len(text) < min_chars:
                continue
            documents.append((title, text[:max_chars]))
            if max_documents is not None and len(documents) >= max_documents:
                return documents
    return documents
