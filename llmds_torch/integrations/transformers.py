"""Hugging Face decoders on the paged KV cache: :class:`PagedCausalLM`.

::

    from llmds_torch.integrations.transformers import PagedCausalLM
    from llmds_torch.models import SamplingParams

    lm = PagedCausalLM.from_pretrained("path/to/model")          # or PagedCausalLM(hf_model)
    results = lm.generate(["Hello", "Hi there"], SamplingParams(max_new_tokens=32))
    print(lm.tokenizer.decode(results[0].outputs[0].token_ids))

The transformers model keeps running its own code (embeddings, norms, RoPE, MLPs, final logit
soft-capping); only its attention is replaced by the paged one (see
:mod:`llmds_torch.integrations.hf_attention`). ``PagedCausalLM`` implements the model interface the
generation engine and the serving loop drive — ``forward(cache, seq_ids, token_ids) -> logits``
plus the shape and checks — so continuous batching, chunked prefill, prefix sharing, ``n > 1``,
beam search and preemption work unchanged.

Needs the ``hf`` extra (``pip install -e ".[hf]"`` in a checkout, ``pip install "llmds-torch[hf]"`` from a wheel).
"""

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from llmds_torch.errors import ConfigError, ContextWindowExceeded, InvalidTokenIds
from llmds_torch.integrations.errors import MissingTokenizer
from llmds_torch.integrations.hf_attention import ATTENTION_NAME, PagedStep, register_paged_attention
from llmds_torch.integrations.hf_support import AttentionNeeds, check_dtype, check_supported
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.engine import EngineConfig, GenerationEngine, GenerationResult
from llmds_torch.install_hint import install_hint
from llmds_torch.models.errors import MissingOptionalDependency
from llmds_torch.models.sampling import SamplingParams

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingOptionalDependency("llmds_torch.integrations.transformers needs the transformers package: "
                                    + install_hint("hf")) from exc

CPU_KV_CACHE_MEMORY = 1 << 30
CUDA_KV_CACHE_FRACTION = 0.5


def _pool_pages(needs: AttentionNeeds, page_size: int, page_bytes: int, device: torch.device,
                kv_cache_memory: int | None) -> tuple[int, int]:
    """(initial, most) pages of a pool sized from a memory budget: ``kv_cache_memory`` bytes, or by
    default half of the free memory of a CUDA device (measured after the weights are loaded) and
    1 GiB on CPU. The pool starts with room for one full-context sequence (or the whole budget, if
    smaller) and grows on demand up to the budget."""
    if kv_cache_memory is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            kv_cache_memory = int(free * CUDA_KV_CACHE_FRACTION)
        else:
            kv_cache_memory = CPU_KV_CACHE_MEMORY
    if isinstance(kv_cache_memory, bool) or not isinstance(kv_cache_memory, int) or kv_cache_memory < page_bytes:
        raise ConfigError(f"kv_cache_memory must be an int of at least one page ({page_bytes} bytes), "
                          f"got {kv_cache_memory!r}")
    most = kv_cache_memory // page_bytes
    return min(most, math.ceil(needs.max_context_len / page_size)), most


class PagedCausalLM:
    """A transformers causal LM whose attention runs on a :class:`~llmds_torch.kv.PagedKVCache`.

    Parameters
    ----------
    hf_model : transformers ``PreTrainedModel`` (a ``*ForCausalLM`` of a supported ``model_type``)
        Switched to the paged attention (``set_attn_implementation``) and to eval mode; call it
        through this object from then on (or switch it back with
        ``hf_model.set_attn_implementation("sdpa")``).
    page_size : int
        Tokens per KV page.
    num_pages, max_num_pages : int or None
        The pool's initial and largest size in pages. ``num_pages=None`` sizes it from
        ``kv_cache_memory`` (see below); ``max_num_pages=None`` with an explicit ``num_pages`` keeps
        the pool fixed.
    kv_cache_memory : int or None
        Bytes the pool may grow to when ``num_pages`` is None: by default half of the CUDA device's
        free memory, or 1 GiB on CPU. The pool starts with pages for one full-context sequence.
    tokenizer : transformers tokenizer or None
        Needed only for text prompts.
    engine_config : EngineConfig or None
        Batching knobs of :meth:`generate`.
    **cache_options
        Further :class:`~llmds_torch.kv.KVCacheConfig` fields (``salt``, ``eviction_policy``, ``backend``, ...).

    Attributes
    ----------
    cache : PagedKVCache
        The pool every generation runs on (prefix pages stay cached between calls).
    hf_model, tokenizer, engine_config : as given
    needs : AttentionNeeds
        The cache shape, vocabulary, context length and per-layer windows read from the config.

    Raises
    ------
    UnsupportedArchitecture
        Not a decoder-only causal LM of a supported type, or a feature the kernels lack; nothing is
        allocated and ``hf_model`` is left unchanged.
    ConfigError
        A dtype the pool cannot hold, or bad pool sizes.
    """

    def __init__(self, hf_model, *, page_size: int = 16, num_pages: int | None = None,
                 max_num_pages: int | None = None, kv_cache_memory: int | None = None, tokenizer=None,
                 engine_config: EngineConfig | None = None, **cache_options):
        if not isinstance(hf_model, transformers.PreTrainedModel):
            raise ConfigError(f"PagedCausalLM needs a transformers PreTrainedModel, got {type(hf_model).__name__}")
        needs = check_supported(hf_model.config, type(hf_model).__name__)
        dtype, device = hf_model.dtype, hf_model.device
        check_dtype(dtype)
        for name in ("num_layers", "num_kv_heads", "head_dim", "dtype", "device", "max_context_len"):
            if name in cache_options:
                raise ConfigError(f"{name} follows from the model; do not pass it as a cache option")
        shape = dict(num_layers=needs.num_layers, num_kv_heads=needs.num_kv_heads, head_dim=needs.head_dim,
                     page_size=page_size, dtype=dtype, device=device, max_context_len=needs.max_context_len)
        if num_pages is None:
            probe = KVCacheConfig(**shape, num_pages=1, **cache_options)
            num_pages, budget = _pool_pages(needs, page_size, probe.page_bytes, probe.torch_device, kv_cache_memory)
            max_num_pages = budget if max_num_pages is None else max_num_pages
        config = KVCacheConfig(**shape, num_pages=num_pages, max_num_pages=max_num_pages, **cache_options)
        previous = hf_model.config._attn_implementation or "eager"
        register_paged_attention()
        hf_model.set_attn_implementation(ATTENTION_NAME)
        if hf_model.config._attn_implementation != ATTENTION_NAME:  # transformers only warns
            raise ConfigError(f"{type(hf_model).__name__} does not dispatch attention through transformers' "
                              "AttentionInterface")
        try:
            self.cache = PagedKVCache(config)
        except BaseException:
            hf_model.set_attn_implementation(previous)
            raise
        hf_model.eval()
        self.hf_model = hf_model
        self.needs = needs
        self.tokenizer = tokenizer
        self.engine_config = engine_config

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                        tokenizer=None, **options) -> "PagedCausalLM":
        """Load a causal LM with transformers and put it on the paged cache.

        Parameters
        ----------
        path : a folder saved with ``save_pretrained`` (or anything ``AutoModelForCausalLM`` accepts)
        dtype : torch.dtype or None
            None keeps the checkpoint's dtype (``config.json``'s ``dtype``), as transformers does.
        device : where the weights and the pool live
        tokenizer : a tokenizer, or None to load the folder's own when it has one
        **options : passed to :class:`PagedCausalLM`

        Raises
        ------
        UnsupportedArchitecture, ConfigError
            From the config alone, before any weight is loaded.
        """
        hf_config = transformers.AutoConfig.from_pretrained(path)
        check_supported(hf_config)
        wanted = dtype if dtype is not None else _checkpoint_dtype(hf_config)
        check_dtype(wanted)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=wanted).to(device)
        if tokenizer is None and _has_tokenizer(path):
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return cls(hf_model, tokenizer=tokenizer, **options)

    # ------------------------------------------------------------------ the model interface

    @property
    def num_layers(self) -> int:
        return self.needs.num_layers

    @property
    def num_kv_heads(self) -> int:
        return self.needs.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.needs.head_dim

    @property
    def vocab_size(self) -> int:
        return self.needs.vocab_size

    @property
    def max_context_len(self) -> int:
        return self.needs.max_context_len

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    def check_token_ids(self, token_ids) -> None:
        """Raise ``InvalidTokenIds`` unless every id is an integer in ``[0, vocab_size)``."""
        ids = torch.as_tensor(token_ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
            raise InvalidTokenIds(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise InvalidTokenIds(f"token ids span [{int(ids.min())}, {int(ids.max())}]; allowed: "
                                  f"0 <= id < vocab_size={self.vocab_size}")

    def check_length(self, num_tokens: int) -> None:
        """Raise ``ContextWindowExceeded`` when a sequence of ``num_tokens`` exceeds ``max_context_len``."""
        if num_tokens > self.max_context_len:
            raise ContextWindowExceeded(f"sequence of {num_tokens} tokens exceeds the model's "
                                        f"max_context_len={self.max_context_len}")

    @torch.no_grad()
    def forward(self, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Compute the next reserved tokens of a batch of cached sequences and write their K/V.

        Same contract as :meth:`llmds_torch.models.llama.LlamaModel.forward`: ``token_ids[i]`` are
        the next reserved, unwritten tokens of sequence ``seq_ids[i]`` (all of them, or the first
        part of a prompt).

        Returns
        -------
        Tensor ``[batch, vocab_size]``: logits after the last new token of each sequence.
        """
        self.check_token_ids([t for toks in token_ids for t in toks])
        step = PagedStep.build(cache, seq_ids, token_ids, self.device)
        out = self.hf_model(input_ids=step.input_ids, position_ids=step.position_ids, use_cache=False,
                            logits_to_keep=step.last_rows, paged_step=step)
        return out.logits[0]  # [B, V]

    # ------------------------------------------------------------------ generation

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt: token ids pass through; a string is tokenized; a list of chat
        messages (``{"role": ..., "content": ...}``) goes through the tokenizer's chat template with
        the generation prompt added."""
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict)):
            if self.tokenizer is None:
                raise MissingTokenizer("text prompts need a tokenizer: pass tokenizer= or give token ids")
            if isinstance(prompt, str):
                return list(self.tokenizer(prompt)["input_ids"])
            ids = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if isinstance(prompt, torch.Tensor):
            return prompt.tolist()
        return list(prompt)

    def eos_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids from the model's ``generation_config`` (else its config)."""
        source = getattr(self.hf_model, "generation_config", None)
        eos = getattr(source, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.hf_model.config, "eos_token_id", None)
        if eos is None:
            return ()
        return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))

    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 salt: bytes | str | None = None, ignore_eos: bool = False,
                 progress: bool = False) -> list[GenerationResult]:
        """Generate for every prompt with continuous batching on :attr:`cache`.

        Parameters
        ----------
        prompts : sequence of prompts: token-id lists, strings, or chat-message lists (see :meth:`encode`)
        params : SamplingParams, one per prompt, or None (greedy, 16 new tokens)
        salt : prefix-cache salt of these requests
        ignore_eos : when False (default), requests whose ``stop_token_ids`` are empty stop at the
            model's end-of-sequence ids (:meth:`eos_token_ids`)
        progress : show a progress bar

        Returns
        -------
        list of GenerationResult, in prompt order: ``results[i].outputs[0].token_ids`` are the new
        tokens, ``results[i].num_cached_prompt_tokens`` the prompt tokens found in the cache.

        Raises
        ------
        InvalidTokenIds, ContextWindowExceeded, MissingTokenizer, RequestTooLarge
            Before any request runs or anything is allocated.
        """
        prompts = [self.encode(p) for p in prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        eos = () if ignore_eos else self.eos_token_ids()
        params = [replace(p, stop_token_ids=eos) if eos and not p.stop_token_ids else p for p in params]
        for prompt, p in zip(prompts, params):
            if not prompt:
                raise InvalidTokenIds("prompts must not be empty")
            self.check_token_ids(prompt)
            self.check_length(len(prompt) + p.max_new_tokens)
        engine = GenerationEngine(self, self.cache, self.engine_config)
        return engine.generate(prompts, params, salt=salt, progress=progress)


def _checkpoint_dtype(hf_config) -> torch.dtype:
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"config.json names dtype {hf_config.dtype!r}, which is not a torch dtype")
    return dtype


def _has_tokenizer(path) -> bool:
    folder = Path(path)
    return folder.is_dir() and any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                                           "tokenizer.model", "vocab.json"))


__all__ = ["PagedCausalLM", "MissingTokenizer"]
