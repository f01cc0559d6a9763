"""Shared helpers: small random transformers models (the reference oracle) and qwen25 twins of them."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def hf_qwen2(seed: int = 0, **overrides):
    """A random transformers Qwen2ForCausalLM in fp32, eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=1_000_000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**kwargs)).eval()


@pytest.fixture
def hf_model_factory():
    return hf_qwen2
