"""The Qwen2 / Qwen2.5 decoder as plain nn.Modules.

Module and parameter names are transformers' (`model.layers.3.self_attn.q_proj.weight`), so an HF
checkpoint's state dict loads with no key mapping. The math matches transformers' `modeling_qwen2.py`:
RMSNorm in fp32, half-split RoPE with fp32 angles, GQA with q/k/v bias, SwiGLU MLP. A config with experts
swaps the MLP of its sparse layers for the Qwen2-MoE block of `moe.py`. Checkpoint I/O lives in
`checkpoint.py`; this file has no distributed or file concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qwen25.model.attention import Attention, AttentionBackend, AttentionMask
from qwen25.model.checkpoint import CheckpointError, load_state_dict, read_generation_config, save_pretrained
from qwen25.model.config import ModelConfig, torch_dtype
from qwen25.model.kv_cache import KVCache
from qwen25.model.layers import MLP, Linear, RMSNorm
from qwen25.model.losses import linear_cross_entropy, linear_log_probs
from qwen25.model.moe import Experts, RouterStats, Routing, SparseMoeBlock, router_stats
from qwen25.model.rope import RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SparseMoeBlock(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: AttentionMask,
                cache: KVCache | None, backend: AttentionBackend | None = None) -> tuple[torch.Tensor, Routing | None]:
        """The new hidden states, and this layer's MoE routing (None for a dense MLP)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, backend)
        out = self.mlp(self.post_attention_layernorm(x))
        out, routing = out if isinstance(out, tuple) else (out, None)
        return x + out, routing


class Qwen2Model(nn.Module):
    """Embeddings, decoder layers and the final norm: ids -> final hidden states.

    `attention` is the long-context backend every layer uses (None: dense SDPA); a loader sets it through
    `Qwen2ForCausalLM.set_attention` and the forward passes it down, so the layers hold no switch of their own.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.kv_head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.attention: AttentionBackend | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, list[tuple[int, Routing]]]:
        """Final hidden states [B, T, H] and the (layer index, routing) of every MoE layer."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        ragged = cache is not None and cache.ragged  # rows of their own lengths (the engine's continuous batch)
        if ragged and (attention_mask is not None or self.attention is not None or self.rotary_emb.dynamic):
            raise ValueError("a KV cache with rows of different lengths takes no attention_mask and needs dense "
                             "attention with static RoPE (long-context methods need rows of one length)")
        if position_ids is None:
            position_ids = (cache.positions(T) if ragged
                            else default_position_ids(attention_mask, B, T, past, input_ids.device))
        h = self.embed_tokens(input_ids)
        factor = None
        if self.rotary_emb.dynamic:  # per-request YaRN: chosen from the prompt at prefill, kept in the cache
            if cache is None:
                factor = self.rotary_emb.request_factor(T)
            else:
                if cache.rope_factor is None:
                    cache.rope_factor = self.rotary_emb.request_factor(cache.prompt_length or past + T)
                factor = cache.rope_factor
        cos, sin = self.rotary_emb(position_ids, h.dtype, factor)
        mask = (AttentionMask.for_rows(cache.lengths, T, input_ids.device) if ragged
                else AttentionMask.build(attention_mask, B, T, past, input_ids.device, segment_ids))
        routings = []
        for i, layer in enumerate(self.layers):
            h, routing = layer(h, cos, sin, mask, cache, self.attention)
            if routing is not None:
                routings.append((i, routing))
        if cache is not None:
            cache.advance(T)
        return self.norm(h), routings


def default_position_ids(attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int,
                         device: torch.device) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded row gets the positions it would have alone."""
    if attention_mask is None:
        return torch.arange(past, past + q_len, device=device).unsqueeze(0).expand(batch, q_len)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]


@dataclass
class CausalLMOutput:
    """What one forward computed; every field is this forward's own (nothing is kept on the modules).

    logits: [B, T or logits_to_keep, vocab] when asked for (the default without labels).
    loss: with labels, the summed cross-entropy over targets that are not -100 (a trainer divides by its global
      token count, which keeps gradient accumulation and data parallelism exact).
    logprobs: with labels and `return_logprobs`, [B, T] fp32 log p(label) (0 where the label is -100), through the
      chunked LM head: no [B, T, vocab] tensor in forward or backward.
    aux_loss / router: MoE models, when training or asked for: the load-balancing loss of this forward
      (transformers' unweighted `aux_loss`; add `router.weighted_aux_loss` to a loss) and per-expert load.
    """

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    router: RouterStats | None = None

    @property
    def aux_loss(self) -> torch.Tensor | None:
        return None if self.router is None else self.router.aux_loss


class Qwen2ForCausalLM(nn.Module):
    """The decoder with its LM head. `model(ids).logits`; `model(ids, labels=targets).loss` (summed CE);
    `model(ids, labels=targets, return_logprobs=True).logprobs` (per-token log-probs). See `CausalLMOutput`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.generation_config: dict = {}
        self.model = Qwen2Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, labels: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, return_logits: bool | None = None,
                return_logprobs: bool = False, return_router_stats: bool | None = None) -> CausalLMOutput:
        """return_logits: default True without labels, False with them. return_router_stats (MoE): default True
        when gradients are enabled (training), else False: decoding does not pay for the statistics."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(input_ids.shape)} like input_ids")
        if return_logprobs and labels is None:
            raise ValueError("return_logprobs needs labels: the tokens whose log-probabilities to return")
        h, routings = self.model(input_ids, attention_mask, position_ids, cache, segment_ids)
        out = CausalLMOutput()
        if routings and (torch.is_grad_enabled() if return_router_stats is None else return_router_stats):
            past = cache.length - input_ids.shape[1] if cache is not None else 0
            token_mask = None if attention_mask is None else attention_mask[:, past:]
            out.router = router_stats(routings, token_mask, self.config.router_aux_loss_coef)
        if labels is not None:
            flat = h.flatten(0, 1)
            if return_logprobs:
                out.logprobs = linear_log_probs(flat, self.lm_head.weight, labels.reshape(-1)).view(labels.shape)
                out.loss = -out.logprobs.sum()
            else:
                out.loss = linear_cross_entropy(flat, self.lm_head.weight, labels.reshape(-1))
        if return_logits if return_logits is not None else labels is None:
            out.logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        return out

    def set_attention(self, backend: AttentionBackend | None) -> None:
        """Use a long-context attention backend in every layer (None: dense SDPA); see `model.attention`."""
        self.model.attention = backend

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_rope(self, theta: float, scaling: dict | None = None) -> None:
        """Change the RoPE base (ABF between pretraining stages) or scaling, keeping config in step."""
        self.config = self.config.replace(rope_theta=theta, rope_scaling=scaling)
        self.model.rotary_emb.configure(theta, scaling)

    def save_pretrained(self, directory, dtype: torch.dtype | None = None, max_shard_bytes: int = 5 * 2**30) -> None:
        """An HF directory that transformers and vLLM load unchanged (`checkpoint.save_pretrained`)."""
        save_pretrained(self, directory, dtype=dtype, max_shard_bytes=max_shard_bytes)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """transformers' init: normal(0, initializer_range) for linear, embedding and expert weights, zero
        biases, ones for norms."""
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                if module is self.lm_head and self.config.tie_word_embeddings:
                    continue
                w = torch.empty(module.weight.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
                module.weight.copy_(w)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, Experts):
                for w in (module.gate_up, module.down):
                    w.copy_(torch.empty(w.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                seed: int | None = 0) -> Qwen2ForCausalLM:
    """Build a model. On 'meta' it takes no memory (parameter counts of 72B); elsewhere it is initialised."""
    dtype = torch_dtype(dtype or cfg.dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    if str(device) == "meta":
        return model.to(dtype)
    model = model.to_empty(device=device)
    model.tie_weights()
    model.init_weights(seed)
    return model.to(dtype)


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu") -> Qwen2ForCausalLM:
    """Load an HF-format Qwen2 directory. `dtype` defaults to the config's dtype."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face model directory)")
    cfg = ModelConfig.from_file(directory)
    dtype = torch_dtype(dtype or cfg.dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    state = load_state_dict(directory, model, dtype)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = read_generation_config(directory)
    return model.to(device)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameters; tied embeddings count once, the LM head counts as embedding."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    embedding = {id(model.model.embed_tokens.weight): model.model.embed_tokens.weight.numel(),
                 id(model.lm_head.weight): model.lm_head.weight.numel()}
    return total, total - sum(embedding.values())
