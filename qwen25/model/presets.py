"""Every Qwen2.5 size as data (report §2, SPEC §1), the published Qwen MoE models (SPEC §2), plus small
shapes for CPU work.

A preset name resolves to a `ModelConfig` and the `generation_config.json` the released checkpoint ships.
"""

from __future__ import annotations

from typing import Any

from qwen25.model.config import ModelConfig

ENDOFTEXT, IM_END = 151643, 151645

# size: hidden, intermediate, layers, heads, kv heads, vocab rows, tied, base max positions, base rms eps
_DENSE: dict[str, tuple[int, int, int, int, int, int, bool, int, float]] = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True, 32768, 1e-6),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True, 131072, 1e-6),
    "3b": (2048, 11008, 36, 16, 2, 151936, True, 32768, 1e-6),
    "7b": (3584, 18944, 28, 28, 4, 152064, False, 131072, 1e-6),
    "14b": (5120, 13824, 48, 40, 8, 152064, False, 131072, 1e-5),
    "32b": (5120, 27648, 64, 40, 8, 152064, False, 131072, 1e-5),
    "72b": (8192, 29568, 80, 64, 8, 152064, False, 131072, 1e-5),
}

# Small shapes for CPU work with a project-trained tokenizer. Same architecture, fewer numbers.
# name: vocab, hidden, intermediate, layers, heads, kv heads, max positions
_SMALL: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "qwen25-tiny": (8192, 128, 384, 4, 4, 2, 4096),  # ~1.8M params: `make run`, CI
    "qwen25-small": (16384, 256, 768, 8, 4, 2, 8192),  # ~11M
    "qwen25-25m": (16384, 448, 1216, 8, 7, 1, 8192),  # ~24M, GQA 7 like the 7B
    "qwen25-100m": (32768, 768, 2048, 12, 12, 2, 32768),  # ~98M
}


# The released Qwen MoE checkpoints (SPEC §2; the report's Turbo/Plus are MoE but unreleased). All: vocab 151936,
# untied, rope_theta 1e6, rms eps 1e-6, softmax-then-top-k without renormalisation, every layer sparse, aux coef
# 0.001. Chat/Instruct variants differ in eos and max positions (32768).
# name: hidden, intermediate, layers, heads, kv heads, experts, experts per token, moe intermediate,
#       shared expert intermediate, base max positions, chat suffix
_MOE: dict[str, tuple[int, int, int, int, int, int, int, int, int, int, str]] = {
    "qwen1.5-moe-a2.7b": (2048, 5632, 24, 16, 16, 60, 4, 1408, 5632, 8192, "-chat"),  # 14.3B total, 2.7B active
    "qwen2-57b-a14b": (3584, 18944, 28, 28, 4, 64, 8, 2560, 20480, 131072, "-instruct"),  # 57B total, 14B active
}

# Small MoE shapes for CPU work, like _SMALL. name: vocab, hidden, intermediate, layers, heads, kv heads, experts,
# experts per token, moe intermediate, shared expert intermediate, max positions
_SMALL_MOE: dict[str, tuple[int, int, int, int, int, int, int, int, int, int, int]] = {
    "qwen25-moe-tiny": (8192, 128, 384, 4, 4, 2, 8, 2, 96, 384, 4096),  # ~3.0M total, ~2.1M activated
    "qwen25-moe-25m": (16384, 384, 1024, 6, 6, 2, 16, 4, 128, 512, 8192),  # ~26M total, ~16M activated
}


def _dense(size: str, instruct: bool) -> tuple[ModelConfig, dict[str, Any]]:
    hidden, inter, layers, heads, kv, vocab, tied, base_max_pos, base_eps = _DENSE[size]
    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
        max_position_embeddings=32768 if instruct else base_max_pos,
        rms_norm_eps=1e-6 if instruct else base_eps,
        rope_theta=1_000_000.0, bos_token_id=ENDOFTEXT, eos_token_id=IM_END if instruct else ENDOFTEXT,
        dtype="bfloat16",
    )
    return cfg, _generation_config(instruct, repetition_penalty=1.1 if size in ("0.5b", "1.5b", "3b") else 1.05)


def _generation_config(chat: bool, repetition_penalty: float) -> dict[str, Any]:
    """generation_config.json of the released checkpoints: chat models sample and stop on either end token."""
    if chat:
        return {"bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "do_sample": True,
                "eos_token_id": [IM_END, ENDOFTEXT], "repetition_penalty": repetition_penalty,
                "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    return {"bos_token_id": ENDOFTEXT, "do_sample": False, "eos_token_id": ENDOFTEXT, "max_new_tokens": 2048}


def _small(name: str) -> tuple[ModelConfig, dict[str, Any]]:
    return _small_config(*_SMALL[name]), {"do_sample": False}


def _small_config(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, max_pos: int) -> ModelConfig:
    # Control tokens sit right after the regular vocabulary (the tokenizer decides the exact ids), so the
    # small presets leave bos/eos unset until a tokenizer is attached.
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
        max_position_embeddings=max_pos, rope_theta=10_000.0, bos_token_id=None, eos_token_id=None,
        dtype="float32",
    )


def _moe(name: str, chat: bool) -> tuple[ModelConfig, dict[str, Any]]:
    hidden, inter, layers, heads, kv, experts, top_k, moe_inter, shared_inter, base_max_pos, _ = _MOE[name]
    cfg = ModelConfig(
        vocab_size=151936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False,
        max_position_embeddings=32768 if chat else base_max_pos, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        bos_token_id=ENDOFTEXT, eos_token_id=IM_END if chat else ENDOFTEXT, dtype="bfloat16",
        num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared_inter, norm_topk_prob=False, decoder_sparse_step=1,
        router_aux_loss_coef=0.001,
    )
    return cfg, _generation_config(chat, repetition_penalty=1.05)


def _small_moe(name: str) -> tuple[ModelConfig, dict[str, Any]]:
    vocab, hidden, inter, layers, heads, kv, experts, top_k, moe_inter, shared_inter, max_pos = _SMALL_MOE[name]
    cfg = _small_config(vocab, hidden, inter, layers, heads, kv, max_pos).replace(
        num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared_inter)
    return cfg, {"do_sample": False}


PRESET_NAMES: list[str] = (
    [f"qwen2.5-{s}{suffix}" for s in _DENSE for suffix in ("", "-instruct")] + list(_SMALL)
    + [f"{name}{suffix}" for name, row in _MOE.items() for suffix in ("", row[-1])] + list(_SMALL_MOE)
)


def get_preset(name: str) -> tuple[ModelConfig, dict[str, Any]]:
    """Return (config, generation_config dict) for a preset name such as 'qwen2.5-7b-instruct'."""
    key = name.lower()
    if key in _SMALL:
        return _small(key)
    if key in _SMALL_MOE:
        return _small_moe(key)
    for moe_name, row in _MOE.items():
        if key in (moe_name, moe_name + row[-1]):
            return _moe(moe_name, chat=key != moe_name)
    if key.startswith("qwen2.5-"):
        rest = key.removeprefix("qwen2.5-")
        instruct = rest.endswith("-instruct")
        size = rest.removesuffix("-instruct")
        if size in _DENSE:
            return _dense(size, instruct)
    raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESET_NAMES)}")
