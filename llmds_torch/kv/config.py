"""Configuration of a paged KV cache."""

from dataclasses import dataclass, field

import torch

from llmds_torch.errors import ConfigError

KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True, slots=True)
class KVCacheConfig:
    """Shape and policy of a ``PagedKVCache``.

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        Model shape: the pool holds ``[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]``.
    page_size : int
        Tokens per page (any positive integer; powers of two suit kernels best).
    num_pages : int
        Pages preallocated at start.
    dtype : torch.dtype
        float16, bfloat16 or float32.
    device : str | torch.device
        ``"cpu"`` (default) or a CUDA device.
    max_num_pages : int | None
        The pool grows up to this many pages when it runs out of free pages, before evicting
        cached prefixes. ``None``: fixed size.
    salt : bytes | str | None
        Per-cache salt of the prefix keys; ``None`` draws random bytes (keys differ per process).
    verify_tokens : bool
        Compare token ids on every prefix-key hit (protects against hash collisions).
    eviction_policy : str | object
        ``"lru"``, ``"fifo"``, or an ``EvictionPolicy`` instance.
    max_context_len : int | None
        Longest sequence a ``attach``/``append`` may build.
    defrag_threshold : float | None
        When set, ``detach`` compacts the pool (lowest-ids order) once ``fragmentation`` exceeds it.
    backend : str
        Kernel backend: ``"auto"`` (Triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.
    check_writes : bool
        Debug mode: record every layer's write slot by slot (O(batch) per layer) instead of
        counting layers against the issued slot mapping (O(1) per layer). Same results.
    host_pages : int
        Pages of the host-memory tier (0: off). Published pages evicted from the device pool are
        copied there (pinned memory on CUDA, LRU) and a prefix hit on them copies them back.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int = 16
    num_pages: int = 1024
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    max_num_pages: int | None = None
    salt: bytes | str | None = None
    verify_tokens: bool = True
    eviction_policy: object = "lru"
    max_context_len: int | None = None
    defrag_threshold: float | None = None
    backend: str = "auto"
    check_writes: bool = False
    host_pages: int = 0
    torch_device: torch.device = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size", "num_pages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.dtype not in KV_DTYPES:
            raise ConfigError(f"dtype must be one of float16, bfloat16, float32; got {self.dtype}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {self.device!r} is not a torch device: {exc}") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or a CUDA device, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} requested but CUDA is not available")
        object.__setattr__(self, "torch_device", device)
        if self.max_num_pages is not None and (not isinstance(self.max_num_pages, int) or self.max_num_pages < self.num_pages):
            raise ConfigError(f"max_num_pages must be an integer >= num_pages ({self.num_pages}), got {self.max_num_pages!r}")
        if self.salt is not None and not isinstance(self.salt, (bytes, str)):
            raise ConfigError(f"salt must be bytes, str or None, got {type(self.salt).__name__}")
        if self.max_context_len is not None and (not isinstance(self.max_context_len, int) or self.max_context_len < 1):
            raise ConfigError(f"max_context_len must be a positive integer or None, got {self.max_context_len!r}")
        if self.defrag_threshold is not None and not 0.0 < self.defrag_threshold < 1.0:
            raise ConfigError(f"defrag_threshold must lie in (0, 1) or be None, got {self.defrag_threshold!r}")
        if not isinstance(self.host_pages, int) or isinstance(self.host_pages, bool) or self.host_pages < 0:
            raise ConfigError(f"host_pages must be a non-negative integer (0 turns the host tier off), got {self.host_pages!r}")
        if self.backend not in ("auto", "triton", "torch"):
            raise ConfigError(f"backend must be 'auto', 'triton' or 'torch', got {self.backend!r}")

    @property
    def page_bytes(self) -> int:
        """Bytes of one page across all layers (K and V)."""
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        return self.num_layers * 2 * self.page_size * self.num_kv_heads * self.head_dim * itemsize
