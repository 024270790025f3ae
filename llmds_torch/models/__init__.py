"""llmds_torch.models: the reference decoder, sampling, and the generation engine that drives any model
with the model interface (``forward(cache, seq_ids, token_ids) -> logits``) on a paged KV cache.

Hugging Face decoders plug in through :mod:`llmds_torch.integrations.transformers`."""

from llmds_torch.models.config import Llama3RopeScaling, LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models import errors
from llmds_torch.models.errors import *  # noqa: F401,F403  (the package exports its errors)
from llmds_torch.models.hf_loader import load_hf_config, load_hf_model
from llmds_torch.models.interface import CausalLM
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.runner import GeneratedSequence, GenerationResult, ModelRunner, StepOutput
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.models.serving import ServeResult, ServingLoop

__all__ = [
    "LlamaConfig", "Llama3RopeScaling", "LlamaModel", "load_hf_model", "load_hf_config", "CausalLM",
    "SamplingParams", "ModelRunner", "GenerationEngine", "EngineConfig", "GenerationResult", "GeneratedSequence",
    "StepOutput", "ServingLoop", "ServeResult",
] + errors.__all__
