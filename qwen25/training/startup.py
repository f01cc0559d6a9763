"""Where a training stage starts and what it leaves behind: a model from a preset (random init) or from any HF
directory (our export or a released Qwen2.5 checkpoint), and an HF directory at the end of every stage.

The model is built on the meta device and its weights arrive once (initialised, or read from safetensors and
assigned), in fp32 on the run's device; the trainer then wraps it for FSDP2/DDP, which shard or replicate the
weights the model already holds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from qwen25.model import ModelConfig, Qwen2ForCausalLM, build_model, from_pretrained, get_preset
from qwen25.tokenizer import QwenTokenizer
from qwen25.training.distributed import DistInfo


def load_for_training(path: str = "", preset: str = "", device: torch.device | str = "cpu", seed: int = 0,
                      where: str = "model") -> Qwen2ForCausalLM:
    """An HF directory (`path`) or a preset (`preset`, initialised with `seed`), in fp32, in training mode."""
    if bool(path) == bool(preset):
        raise ValueError(f"{where}: give exactly one of 'path' (an HF model directory) or 'preset' (a preset name)")
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{where}.path: {path} is not a model directory")
        model = from_pretrained(path, dtype=torch.float32, device=device)
    else:
        try:
            cfg, gen = get_preset(preset)
        except KeyError as e:
            raise ValueError(f"{where}.preset: {e.args[0]}") from None
        model = build_model(cfg.replace(dtype="float32"), device=device, seed=seed)
        model.generation_config = gen
    return model.train()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered in full on the CPU (FSDP shards, DDP and checkpoint wrappers undone)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_hf(model: torch.nn.Module, config: ModelConfig, tok: QwenTokenizer, out: str | Path, info: DistInfo,
              generation_config: dict | None = None) -> Path | None:
    """Gather the trained weights (every rank takes part) and, on rank 0, write an HF directory: model,
    generation_config.json and tokenizer. Returns the directory on rank 0."""
    state = full_state_dict(model)
    if not info.main:
        return None
    out = Path(out)
    plain = build_model(config, device="cpu")
    plain.load_state_dict(state, strict=False)
    plain.tie_weights()
    plain.generation_config = generation_config or {}
    plain.save_pretrained(out)
    tok.save(out)
    return out


def chat_generation_config(tok: QwenTokenizer) -> dict:
    """Stop on <|im_end|> and <|endoftext|>, as the Qwen2.5-Instruct generation_config.json does."""
    im_end = tok.control_ids["<|im_end|>"]
    return {"bos_token_id": tok.endoftext_id, "eos_token_id": [im_end, tok.endoftext_id], "pad_token_id": tok.endoftext_id}
