"""qwen25: the system of the Qwen2.5 technical report, in PyTorch."""

from qwen25.generation import generate, stream
from qwen25.inference.engine import Completion, ContinuationScore, Delta, Engine, QueueFull, RequestOutput
from qwen25.inference.sampling import SamplingParams
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
from qwen25.tokenizer import load_tokenizer

__all__ = [
    "CausalLMOutput", "CheckpointError", "Completion", "ConfigError", "ContinuationScore", "Delta", "Engine",
    "ModelConfig", "QueueFull", "Qwen2ForCausalLM", "RequestOutput", "SamplingParams", "build_model",
    "count_parameters", "from_pretrained", "generate", "get_preset", "load_model", "load_tokenizer", "stream",
]
__version__ = "0.1.0"
