"""A training checkpoint (any world size) -> a Hugging Face model directory, in one plain process."""

from __future__ import annotations

from pathlib import Path

import torch

from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.training.checkpoint import TRAINER_STATE, load_checkpoint


def export_checkpoint(checkpoint: str | Path, out: str | Path, tokenizer: str | None = None) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{checkpoint}: not a complete training checkpoint (no {TRAINER_STATE})")
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=False)
    cfg = ModelConfig.from_hf_dict(state["model_config"], source=f"{checkpoint / TRAINER_STATE}:model_config")
    model = build_model(cfg, device="cpu")
    load_checkpoint(checkpoint, model, optimizer=None)
    run_dir = checkpoint.parent.parent
    tok_dir = tokenizer or state["recipe"]["tokenizer"]["path"] or run_dir / "tokenizer"
    save_hf(model, load_tokenizer(tok_dir), out, cfg.eos_token_id)
    return out


def save_hf(model, tok: QwenTokenizer, out: Path, eot: int) -> None:
    """Model, generation config and tokenizer in one directory: what from_pretrained and HF tools expect.
    Pretraining has one end-of-text token, so it is also bos and pad."""
    model.generation_config = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    model.save_pretrained(out)
    tok.save(out)
