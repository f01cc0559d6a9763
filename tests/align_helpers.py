"""Shared pieces of the reward-model, DPO and GRPO tests: a tiny transformers Qwen2 saved with the official
tokenizer, and preference pairs in the format `qwen25 data pairs` writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qwen25.tokenizer import load_tokenizer

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "chosen": "2 + 3 = 5. The answer is 5.",
     "rejected": "2 + 3 = 6. The answer is 6.", "category": "math"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}],
     "chosen": "7", "rejected": "Sure! A prime number is a number... 8", "category": "conciseness"},
    {"prompt": "Say hi in Chinese.", "chosen": [{"role": "assistant", "content": "你好"}], "rejected": "Hello",
     "provenance": {"chosen": {"family": "instructions"}}},
    {"prompt": [{"role": "user", "content": "What is 12 * 3?"}], "chosen": "12 * 3 = 36. The answer is 36.",
     "rejected": "The answer is 35.", "category": "math"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def tiny_hf_model(directory: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """A random transformers Qwen2ForCausalLM (official vocabulary, 2 layers of width 32) saved in fp32."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=151665, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                      rope_theta=1e6)).float()
    hf.save_pretrained(directory)
    if tokenizer:
        load_tokenizer("qwen2.5").save(directory)
    return directory
