"""llmds_torch.models: the reference decoder, sampling, and the generation engine that drives any model
with the model interface (``forward(cache, seq_ids, token_ids) -> logits``) on a paged KV cache.

Hugging Face decoders plug in through :mod:`llmds_torch.integrations.transformers`."""

from llmds_torch.models.config import LlamaConfig, UnsupportedArchitecture
from llmds_torch.models.engine import EngineConfig, GeneratedSequence, GenerationEngine, GenerationResult
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams

__all__ = ["EngineConfig", "GeneratedSequence", "GenerationEngine", "GenerationResult", "LlamaConfig",
           "LlamaModel", "SamplingParams", "UnsupportedArchitecture"]
