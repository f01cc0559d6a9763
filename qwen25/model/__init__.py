"""The Qwen2.5 model family: config, presets, modules, checkpoints."""

from qwen25.model.attention import AttentionMask, make_backend, register_backend
from qwen25.model.checkpoint import CheckpointError, save_pretrained
from qwen25.model.config import ConfigError, ModelConfig, torch_dtype
from qwen25.model.describe import describe_model
from qwen25.model.kv_cache import KVCache
from qwen25.model.moe import RouterStats, count_activated_parameters
from qwen25.model.presets import PRESET_NAMES, get_preset
from qwen25.model.qwen2 import CausalLMOutput, Qwen2ForCausalLM, build_model, count_parameters, from_pretrained

__all__ = [
    "AttentionMask", "CausalLMOutput", "CheckpointError", "ConfigError", "KVCache", "ModelConfig", "PRESET_NAMES",
    "Qwen2ForCausalLM", "RouterStats", "build_model", "count_activated_parameters", "count_parameters", "describe_model",
    "from_pretrained", "get_preset", "make_backend", "register_backend", "save_pretrained", "torch_dtype",
]
