"""Triton, or a stand-in where it is not installed.

Kernel modules import ``triton`` and ``tl`` from here instead of from triton itself, so that the
package (and with it every CPU path of the library) imports on machines without triton: macOS,
Windows, or a Linux install without the ``gpu`` extra. The stand-in lets the kernel definitions at
module level evaluate (``@triton.jit``, ``tl.constexpr`` annotations); launching one raises
``TritonUnavailable``. ``resolve_backend`` (in ``__init__``) never picks ``"triton"`` when triton is missing, so only
an explicit ``backend="triton"`` can get that far, and it is refused earlier with the same error.
"""

try:
    import triton
    import triton.language as tl
    TRITON_AVAILABLE = True
except ImportError:
    TRITON_AVAILABLE = False

INSTALL_HINT = "install triton (Linux: pip install triton, or the llmds-torch 'gpu' extra)"


class TritonUnavailable(ImportError):
    """A Triton kernel was asked for where triton is not installed."""


if not TRITON_AVAILABLE:

    class _MissingKernel:
        """What ``@triton.jit`` returns without triton: a kernel that refuses to launch."""

        def __init__(self, fn):
            self.fn = fn
            self.__name__ = getattr(fn, "__name__", "kernel")
            self.__doc__ = getattr(fn, "__doc__", None)

        def __getitem__(self, grid):
            raise TritonUnavailable(f"Triton kernel {self.__name__} cannot run: {INSTALL_HINT}")

        def __call__(self, *args, **kwargs):
            self[None]

    class _Triton:
        """The parts of ``triton`` that kernel modules touch at import time or in host code."""

        @staticmethod
        def jit(fn=None, **_options):
            return _MissingKernel(fn) if fn is not None else _MissingKernel

        @staticmethod
        def autotune(*_args, **_kwargs):
            return _MissingKernel

        heuristics = autotune

        @staticmethod
        def Config(*args, **kwargs):  # noqa: N802 (triton's name)
            return (args, kwargs)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()

    class _Language:
        """``triton.language``: any attribute is a placeholder, enough for annotations such as
        ``tl.constexpr`` and defaults such as ``tl.float32``."""

        def __getattr__(self, name: str):
            return _Placeholder(f"tl.{name}")

    class _Placeholder:
        def __init__(self, name: str):
            self.name = name

        def __repr__(self) -> str:
            return f"<{self.name}: triton is not installed>"

        def __getattr__(self, name: str):
            return _Placeholder(f"{self.name}.{name}")

        def __call__(self, *args, **kwargs):
            raise TritonUnavailable(f"{self.name} needs triton: {INSTALL_HINT}")

    triton = _Triton()
    tl = _Language()

__all__ = ["triton", "tl", "TRITON_AVAILABLE", "TritonUnavailable", "INSTALL_HINT"]
