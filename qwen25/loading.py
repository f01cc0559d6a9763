"""Load a model the way a user names it, ready to run: a checkpoint directory, a fetched model's name
(`qwen25 models fetch NAME`), a quantized directory (`qwen25 quantize`) or a preset name, with the attention
its config asks for (a `dual_chunk_attention_config` serves with dual chunk attention, as vLLM does for
Qwen2.5-1M).

This is the one place that joins the model package and the long-context backends, so `qwen25.model` never
imports `qwen25.longctx`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qwen25.inference.hub import KNOWN_MODELS, resolve_model_path
from qwen25.inference.quantize import load_quantized, quantization_config
from qwen25.longctx import configure
from qwen25.model import ModelConfig, Qwen2ForCausalLM, build_model, get_preset
from qwen25.model import from_pretrained as _read_checkpoint


def prepare(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """Give a model the RoPE and attention its config asks for (dense unless the config says otherwise)."""
    if model.config.dual_chunk_attention_config is not None:
        configure(model)
    return model


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu") -> Qwen2ForCausalLM:
    """An HF-format directory, loaded with the attention its config asks for; a quantized directory (a config
    with a `quantization_config` from `qwen25 quantize`) gets its quantized layers."""
    config_file = Path(path) / "config.json"
    if config_file.is_file() and quantization_config(ModelConfig.from_file(config_file), str(config_file)):
        return prepare(load_quantized(path, dtype=dtype, device=device))
    return prepare(_read_checkpoint(path, dtype=dtype, device=device))


def resolve_model(name_or_path: str | Path) -> str:
    """A `--model` argument as given (a directory or a preset name), or a fetched model's cached directory."""
    if str(name_or_path) in KNOWN_MODELS and not Path(name_or_path).exists():
        return str(resolve_model_path(name_or_path))  # says how to fetch it when it is not cached yet
    return str(name_or_path)


def load_model(name_or_path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               seed: int = 0) -> Qwen2ForCausalLM:
    """A checkpoint directory, a fetched model's name, or a preset name (randomly initialised with `seed`)."""
    name_or_path = resolve_model(name_or_path)
    if Path(name_or_path).exists():
        return from_pretrained(name_or_path, dtype=dtype, device=device)
    try:
        cfg, gen = get_preset(str(name_or_path))
    except KeyError as e:
        raise ValueError(f"{name_or_path!r} is neither a model directory nor a preset: {e.args[0]}") from None
    model = build_model(cfg, device=device, dtype=dtype, seed=seed)
    model.generation_config = gen
    return prepare(model)
