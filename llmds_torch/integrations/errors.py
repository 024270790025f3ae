"""Named exceptions of the integrations. This module imports no third-party library, so the errors
can be caught (and ``llmds_torch.integrations`` imported) where transformers is not installed;
importing :mod:`llmds_torch.integrations.transformers` without it raises
``llmds_torch.models.errors.MissingOptionalDependency``."""

from llmds_torch.errors import ConfigError, LLMDSError


class MissingTokenizer(ConfigError):
    """A text prompt was given, but the model has no tokenizer."""


class PagedAttentionUnavailable(LLMDSError, RuntimeError):
    """The paged attention was called without a step (the model was called directly, not through
    ``PagedCausalLM``)."""


__all__ = ["MissingTokenizer", "PagedAttentionUnavailable"]
