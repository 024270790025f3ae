"""Bridges to other libraries' models. Each submodule imports its library only when imported itself;
``llmds_torch`` never imports them, and this package binds only their errors.

- :mod:`llmds_torch.integrations.transformers`: Hugging Face decoders on the paged KV cache,
  ``PagedCausalLM`` (``pip install -e ".[hf]"`` in a checkout, ``pip install "llmds-torch[hf]"`` from
  a wheel).
"""

from llmds_torch.integrations import errors
from llmds_torch.integrations.errors import *  # noqa: F401,F403  (the package exports its errors)

__all__ = list(errors.__all__)
