"""Where numba keeps the machine code it compiles for the library's CPU loops.

Numba's default is a ``__pycache__`` folder next to the source, which for an installed package
means writing into site-packages (or, where that is read-only, a second location of numba's own
choosing). The library instead points numba at a folder of the user's cache directory, chosen in
this order:

1. ``NUMBA_CACHE_DIR`` when the user has set it (left untouched);
2. ``$LLMDS_TORCH_CACHE_DIR/numba``;
3. ``$XDG_CACHE_HOME/llmds_torch/numba``, else ``~/.cache/llmds_torch/numba`` (Linux),
   ``~/Library/Caches/llmds_torch/numba`` (macOS), ``%LOCALAPPDATA%\\llmds_torch\\numba`` (Windows).

Inside that folder the code lives in a subfolder named after a fingerprint of the library's
compiled sources (``COMPILED_SOURCES``: path, size and modification time of each). Numba checks
only the file a cached function is defined in, so a function that inlines one from another file
(the BM25 loops call the shared heap and the varint readers) would otherwise keep running stale
code after that other file changed; with the fingerprint, editing or upgrading any compiled source
starts a fresh cache.

``configure_numba_cache()`` runs when ``llmds_torch`` is imported, before any compiled function is
defined, and sets ``NUMBA_CACHE_DIR`` for the process (numba reads only that variable).
"""

import hashlib
import os
import sys
from pathlib import Path

CACHE_DIR_ENV = "LLMDS_TORCH_CACHE_DIR"

COMPILED_SOURCES = ("heap.py", "sched/indexed_heap.py", "kv/page_release.py", "retrieval/*.py")
"""Globs, relative to the package, of every module holding numba-compiled code."""

_PACKAGE = Path(__file__).resolve().parent


def user_cache_dir() -> Path:
    """The library's folder in the user's cache directory (not created here)."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llmds_torch"


def compiled_sources_fingerprint() -> str:
    """16 hex digits that change when any file of ``COMPILED_SOURCES`` is added, removed or edited."""
    digest = hashlib.sha256()
    for pattern in COMPILED_SOURCES:
        for path in sorted(_PACKAGE.glob(pattern)):
            stat = path.stat()
            digest.update(f"{path.relative_to(_PACKAGE)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def numba_cache_dir() -> Path:
    """The folder numba caches compiled functions in for this process."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    return Path(explicit) if explicit else user_cache_dir() / "numba" / f"src-{compiled_sources_fingerprint()}"


def configure_numba_cache() -> Path | None:
    """Point numba's cache at ``numba_cache_dir()``; return it, or None when it cannot be created
    (numba then falls back to its own choice)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    path = numba_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    numba = sys.modules.get("numba")
    if numba is not None:  # imported before us: make its config read the variable again
        numba.core.config.reload_config()
    return path


__all__ = ["CACHE_DIR_ENV", "COMPILED_SOURCES", "user_cache_dir", "compiled_sources_fingerprint", "numba_cache_dir",
           "configure_numba_cache"]
