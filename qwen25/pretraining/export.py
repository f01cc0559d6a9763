"""A training checkpoint (any world size) -> a Hugging Face model directory, in one plain process.

The checkpoint is verified against its manifest first, the tokenizer must belong to the model, and a non-empty
output directory is only replaced when asked."""

from __future__ import annotations

from pathlib import Path

import torch

from qwen25.io import refuse_overwrite
from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.training.checkpoint import TRAINER_STATE, load_checkpoint, verify_checkpoint
from qwen25.training.startup import chat_generation_config


def check_tokenizer_fits(tok: QwenTokenizer, cfg: ModelConfig, where: str) -> None:
    """A tokenizer belongs to a model when its ids fit the embedding and its end-of-text id is the model's."""
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size} "
                         "embedding rows; it is not this model's tokenizer")
    eos = set(cfg.eos_token_ids)
    if eos and not eos & {tok.endoftext_id, tok.control_ids["<|im_end|>"]}:
        raise ValueError(f"{where}: the model's eos_token_id {sorted(eos)} is neither <|endoftext|> "
                         f"({tok.endoftext_id}) nor <|im_end|> ({tok.control_ids['<|im_end|>']}) of this tokenizer; "
                         "it is not this model's tokenizer")


def export_checkpoint(checkpoint: str | Path, out: str | Path, tokenizer: str | None = None,
                      overwrite: bool = False) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{checkpoint}: not a complete training checkpoint (no {TRAINER_STATE})")
    verify_checkpoint(checkpoint)
    refuse_overwrite(out, overwrite)
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=False)
    cfg = ModelConfig.from_hf_dict(state["model_config"], source=f"{checkpoint / TRAINER_STATE}:model_config")
    recipe = state.get("recipe") or {}
    tok_dir = tokenizer or _recipe_tokenizer(recipe, checkpoint.parent.parent)
    if not tok_dir:
        raise ValueError(f"{checkpoint}: the checkpoint does not say which tokenizer it was trained with; "
                         "pass --tokenizer DIR (or 'qwen2.5')")
    tok = load_tokenizer(tok_dir)
    check_tokenizer_fits(tok, cfg, f"--tokenizer {tok_dir}")
    model = build_model(cfg, device="cpu")
    load_checkpoint(checkpoint, model, optimizer=None)
    if "tokenizer" in recipe:  # a pretraining run: one end-of-text token
        save_hf(model, tok, out, cfg.eos_token_id)
    else:  # a post-training stage (SFT, DPO, GRPO...): a chat model
        model.generation_config = chat_generation_config(tok)
        model.save_pretrained(out)
        tok.save(out)
    return out


def _recipe_tokenizer(recipe: dict, run_dir: Path) -> str | Path | None:
    """Where the run's tokenizer is: a pretraining recipe's [tokenizer] path or the run's own, or a post-training
    recipe's [model] tokenizer or initial model directory."""
    if "tokenizer" in recipe:
        return recipe["tokenizer"].get("path") or run_dir / "tokenizer"
    model = recipe.get("model") or {}
    if isinstance(model, dict) and (model.get("tokenizer") or model.get("path")):
        return model.get("tokenizer") or model.get("path")
    return run_dir / "tokenizer" if (run_dir / "tokenizer").is_dir() else None


def save_hf(model, tok: QwenTokenizer, out: Path, eot: int) -> None:
    """Model, generation config and tokenizer in one directory: what from_pretrained and HF tools expect.
    Pretraining has one end-of-text token, so it is also bos and pad."""
    model.generation_config = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    model.save_pretrained(out)
    tok.save(out)
