"""Named exceptions of the models package: the decoder's config and loader, sampling and the
generation engine. Each is raised before any state changes."""

from llmds_torch.errors import ConfigError, LLMDSError


class UnsupportedArchitecture(ConfigError):
    """A Hugging Face config describes a model this decoder cannot reproduce exactly."""


class MissingOptionalDependency(LLMDSError, ImportError):
    """An optional package this feature needs is not installed; the message names the extra."""


class CheckpointError(LLMDSError, ValueError):
    """A Hugging Face folder is missing files or weights, or holds weights of the wrong shape."""


class InvalidStopTokens(LLMDSError, TypeError):
    """Stop tokens must be a sequence of int token ids."""


class EngineError(LLMDSError, ValueError):
    """A ``preempt`` of a request that is not running."""


__all__ = ["UnsupportedArchitecture", "MissingOptionalDependency", "CheckpointError", "InvalidStopTokens",
           "EngineError"]
