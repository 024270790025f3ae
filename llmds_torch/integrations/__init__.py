"""Bridges to other libraries' models. Each submodule imports its library only when imported itself;
``llmds_torch`` never imports them.

- :mod:`llmds_torch.integrations.transformers`: Hugging Face decoders on the paged KV cache
  (``pip install -e ".[hf]"`` in a checkout, ``pip install "llmds-torch[hf]"`` from a wheel).
"""
