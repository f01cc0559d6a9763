"""qwen25: the system of the Qwen2.5 technical report, in PyTorch."""

from qwen25.generation import SamplingParams, generate, stream
from qwen25.loading import from_pretrained, load_model
from qwen25.model import (
    CausalLMOutput,
    CheckpointError,
    ConfigError,
    ModelConfig,
    Qwen2ForCausalLM,
    build_model,
    count_parameters,
    get_preset,
)

__all__ = [
    "CausalLMOutput", "CheckpointError", "ConfigError", "ModelConfig", "Qwen2ForCausalLM", "SamplingParams",
    "build_model", "count_parameters", "from_pretrained", "generate", "get_preset", "load_model", "stream",
]
__version__ = "0.1.0"
