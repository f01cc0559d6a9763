"""The Qwen2.5 model family: config, presets, modules, checkpoints."""

from qwen25.model.checkpoint import CheckpointError, from_pretrained, save_pretrained
from qwen25.model.config import ConfigError, ModelConfig
from qwen25.model.kv_cache import KVCache
from qwen25.model.moe import RouterStats, count_activated_parameters
from qwen25.model.presets import PRESET_NAMES, get_preset
from qwen25.model.qwen2 import Qwen2ForCausalLM, build_model, count_parameters

__all__ = [
    "CheckpointError", "ConfigError", "KVCache", "ModelConfig", "PRESET_NAMES", "Qwen2ForCausalLM", "RouterStats",
    "build_model", "count_activated_parameters", "count_parameters", "from_pretrained", "get_preset", "load_model",
    "save_pretrained",
]


def load_model(name_or_path: str, dtype=None, device: str = "cpu", seed: int = 0) -> Qwen2ForCausalLM:
    """A checkpoint directory, or a preset name (randomly initialised with `seed`)."""
    from pathlib import Path

    if Path(name_or_path).exists():
        return from_pretrained(name_or_path, dtype=dtype, device=device)
    try:
        cfg, gen = get_preset(name_or_path)
    except KeyError as e:
        raise ValueError(f"{name_or_path!r} is neither a model directory nor a preset: {e.args[0]}") from None
    model = build_model(cfg, device=device, dtype=dtype, seed=seed)
    model.generation_config = gen
    return model
