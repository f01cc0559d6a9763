"""Shared helpers: small random transformers models (the reference oracle) and qwen25 twins of them."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Decode kernels: F.linear everywhere, so results never depend on a timing; tests/test_kernels.py measures.
os.environ.setdefault("QWEN25_KERNELS", "linear")
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


def hf_qwen2_moe(seed: int = 0, router_std: float = 0.5, **overrides):
    """A random transformers Qwen2MoeForCausalLM in fp32, eval mode. Router weights get std `router_std`
    (transformers' init gives 0.02): decisive routing, so no near-tie lets fp32 rounding swap an expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    kwargs = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=1_000_000.0, tie_word_embeddings=False, rms_norm_eps=1e-6, num_experts=8,
                  num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, router_std)
    return model


@pytest.fixture
def hf_model_factory():
    return hf_qwen2
