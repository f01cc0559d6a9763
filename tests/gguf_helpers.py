"""Small qwen2 GGUF files written with gguf's own writer, and a transformers reference built from gguf's
dequantized tensors through this file's own name table: nothing here shares code with qwen25's importer."""

from __future__ import annotations

import json

import gguf
import torch
from gguf import GGMLQuantizationType as Q
from transformers import Qwen2ForCausalLM as HFQwen2
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from qwen25.tokenizer import QwenTokenizer
from qwen25.tokenizer.train import train_bbpe
from tests.conftest import hf_qwen2

TEXTS = ["def reverse(s):\n    return s[::-1]\n", "The quick brown fox jumps over the lazy dog. " * 3,
         "你好世界，今天天气很好。", "for i in range(10):\n    print(i * i)\n"] * 4
LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_key(name: str) -> str:
    base, kind = name.rsplit(".", 1)
    if base.startswith("blk."):
        _, layer, part = base.split(".")
        return f"model.layers.{layer}.{LAYER[part]}.{kind}"
    return f"{GLOBAL[base]}.{kind}"


GGUF_NAME = {f"{hf}.{kind}": f"{g}.{kind}" for g, hf in GLOBAL.items() for kind in ("weight",)}


def to_gguf_name(key: str) -> str:
    if key in GGUF_NAME:
        return GGUF_NAME[key]
    _, _, layer, rest = key.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    part = {v: k for k, v in LAYER.items()}[module]
    return f"blk.{layer}.{part}.{kind}"


def small_tokenizer() -> QwenTokenizer:
    """A 300-token tokenizer of the Qwen2.5 design (278 regular + 22 control tokens)."""
    return train_bbpe(TEXTS, vocab_size=300, min_frequency=2, show_progress=False)


def random_hf(tied: bool, seed: int = 0) -> HFQwen2:
    model = hf_qwen2(seed=seed, vocab_size=320, tie_word_embeddings=tied)
    with torch.no_grad():  # larger than the default init, so logits are not all near zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def write_gguf(path, model: HFQwen2, tok: QwenTokenizer, qtype: Q, arch: str = "qwen2", skip: str | None = None):
    """A qwen2 GGUF as llama.cpp's converter lays one out: matrices in `qtype`, vectors F32."""
    c = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    vocab = {i: t for t, i in tok.tok.get_vocab(with_added_tokens=True).items()}
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(c.vocab_size)]
    types = [gguf.TokenType.NORMAL if i < tok.num_regular_tokens else
             gguf.TokenType.CONTROL if i in vocab else gguf.TokenType.UNUSED for i in range(c.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in json.loads(tok.tok.to_str())["model"]["merges"]])
    w.add_eos_token_id(tok.control_ids["<|im_end|>"])
    w.add_pad_token_id(tok.endoftext_id)
    w.add_bos_token_id(tok.endoftext_id)
    w.add_chat_template("{{ messages }}")
    for key, value in model.state_dict().items():
        if (c.tie_word_embeddings and key == "lm_head.weight") or "rotary" in key:
            continue
        name = to_gguf_name(key)
        if name == skip:
            continue
        values = value.float().numpy()
        t = qtype if values.ndim == 2 else Q.F32
        w.add_tensor(name, gguf.quants.quantize(values, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_from_gguf(path, config) -> HFQwen2:
    """transformers' model from gguf's dequantized tensors (no qwen25 code involved)."""
    reader = gguf.GGUFReader(path)
    state = {hf_key(t.name): torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
             .reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    with torch.device("meta"):
        model = HFQwen2(config)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = Qwen2RotaryEmbedding(config)
    return model.eval()


def tokenizer_json(tok: QwenTokenizer) -> dict:
    """tokenizer.json as data; a trained tokenizer writes null where a built one writes "" (same meaning)."""
    raw = json.loads(tok.tok.to_str())
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        raw["model"][key] = raw["model"][key] or ""
    return raw


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()
