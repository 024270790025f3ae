"""Checks of a loaded file's fields, each refusing with ``CorruptIndexFile`` that names the field.

Loading is an input boundary: a file's checksum catches accidents, not intent (see
:mod:`llmds_torch.retrieval.persist`), so every ``load`` checks dtypes, shapes, ranges, uniqueness
and consistency of what it read before anything uses it. These helpers are the shared vocabulary of
those checks; each structure's own rules live with its loader.

Metadata values must have exactly the JSON type asked for: ``True`` is not an int, ``1.0`` is not
an int, and a string is never a number.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CorruptIndexFile

_MISSING = object()


def _get(meta: dict, name: str):
    value = meta.get(name, _MISSING)
    if value is _MISSING:
        raise CorruptIndexFile(f"field {name!r} is missing")
    return value


def meta_int(meta: dict, name: str, low: int, high: int) -> int:
    """``meta[name]`` as an int in ``[low, high]``."""
    value = _get(meta, name)
    if type(value) is not int:
        raise CorruptIndexFile(f"field {name!r} must be an int; got {type(value).__name__} {value!r:.40}")
    if not low <= value <= high:
        raise CorruptIndexFile(f"field {name!r} is {value}; allowed: [{low}, {high}]")
    return value


def meta_number(meta: dict, name: str) -> float:
    """``meta[name]`` as a finite float (an int or float in the file)."""
    value = _get(meta, name)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise CorruptIndexFile(f"field {name!r} must be a finite number; got {value!r:.40}")
    return float(value)


def meta_bool(meta: dict, name: str) -> bool:
    value = _get(meta, name)
    if type(value) is not bool:
        raise CorruptIndexFile(f"field {name!r} must be true or false; got {value!r:.40}")
    return value


def meta_choice(meta: dict, name: str, choices) -> str:
    value = _get(meta, name)
    if not isinstance(value, str) or value not in choices:
        raise CorruptIndexFile(f"field {name!r} is {value!r:.40}; allowed: {tuple(choices)}")
    return value


def meta_type(meta: dict, name: str, kind: type):
    """``meta[name]``, which must be a ``kind`` (``dict`` or ``list``)."""
    value = _get(meta, name)
    if type(value) is not kind:
        raise CorruptIndexFile(f"field {name!r} must be a {kind.__name__}; got {type(value).__name__}")
    return value


def array(arrays: dict, name: str, dtypes, shape: tuple) -> np.ndarray:
    """``arrays[name]``, checked to have one of ``dtypes`` and ``shape`` (``None`` matches any size)."""
    if name not in arrays:
        raise CorruptIndexFile(f"array {name!r} is missing")
    value = arrays[name]
    dtypes = tuple(np.dtype(d) for d in (dtypes if isinstance(dtypes, (tuple, list)) else (dtypes,)))
    if value.dtype not in dtypes:
        raise CorruptIndexFile(f"array {name!r} has dtype {value.dtype}; expected {' or '.join(map(str, dtypes))}")
    if len(value.shape) != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
        want = ", ".join("n" if size is None else str(size) for size in shape)
        raise CorruptIndexFile(f"array {name!r} has shape {list(value.shape)}; expected [{want}]")
    return value


def values_in(values: np.ndarray, name: str, low, high) -> None:
    """Every element of ``values`` in ``[low, high]``."""
    if values.size and (values.min() < low or values.max() > high):
        bad = values[(values < low) | (values > high)]
        raise CorruptIndexFile(f"array {name!r} holds {bad[:3].tolist()}; allowed: [{low}, {high}]")


def unique(values: np.ndarray, name: str) -> None:
    """No element of ``values`` repeats."""
    if values.size > 1:
        ordered = np.sort(values, kind="stable")
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            raise CorruptIndexFile(f"array {name!r} repeats {repeated[:3].tolist()}; its entries must be unique")


def require(condition: bool, message: str) -> None:
    """Refuse the file with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CorruptIndexFile(message)
