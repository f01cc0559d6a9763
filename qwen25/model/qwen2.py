"""The Qwen2 / Qwen2.5 decoder as plain nn.Modules.

Module and parameter names are transformers' (`model.layers.3.self_attn.q_proj.weight`), so an HF
checkpoint's state dict loads with no key mapping. The math matches transformers' `modeling_qwen2.py`:
RMSNorm in fp32, half-split RoPE with fp32 angles, GQA with q/k/v bias, SwiGLU MLP. A config with experts
swaps the MLP of its sparse layers for the Qwen2-MoE block of `moe.py`. Checkpoint I/O lives in
`checkpoint.py`; this file has no distributed or file concerns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qwen25.model.config import ModelConfig
from qwen25.model.kv_cache import KVCache
from qwen25.model.losses import linear_cross_entropy
from qwen25.model.rope import RotaryEmbedding, apply_rotary

if TYPE_CHECKING:
    from qwen25.model.moe import RouterStats


SKINNY_ROWS = 16  # up to this many rows, CPU matmuls stream the weight faster as W @ x.T than as x @ W.T


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with the few-row shapes of CPU decoding sent to the kernels that stream weights fastest.

    Decoding reads every weight once per step for one row (batch 1) or a few (batched decode), so its speed
    is the weight read rate. On CPU, one row runs as `torch.mv` (about 1.7x the read rate of the GEMM path
    `F.linear` takes), and 2-16 rows as `weight @ x.T` (oneDNN picks a kernel for a tall output that reads
    the weight about 1.25x faster than for `x @ weight.T`); see docs/benchmarks.md.
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 0 < rows <= SKINNY_ROWS:
        return F.linear(x, weight, bias)
    if rows == 1:
        flat = x.reshape(-1)
        y = torch.mv(weight, flat) if bias is None else torch.addmv(bias, weight, flat)
        return y.view(*x.shape[:-1], -1)
    xt = x.reshape(rows, -1).t()
    y = weight @ xt if bias is None else torch.addmm(bias[:, None], weight, xt)
    return y.t().contiguous().view(*x.shape[:-1], -1)  # row-major like F.linear: kernels downstream expect it


class Linear(nn.Linear):
    """nn.Linear whose CPU decode shapes take the faster kernels of `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedProjection:
    """Several Linear layers that read the same input (q/k/v; gate/up), run as one matmul.

    At inference the layers' weights are re-pointed (`param.data = ...`) to row blocks of one contiguous matrix, so the
    weights exist once and the Parameters, their names and the state dict stay exactly as they were. Anything
    that replaces a weight tensor (loading with `assign=True`, `.to(dtype)`) is seen by address on the next
    call and the matrix is rebuilt. Training keeps the separate layers: autograd reaches the Parameters, not
    the matrix they are views of.
    """

    def __init__(self, *linears: nn.Linear) -> None:
        self.linears = linears
        self.sizes = [lin.out_features for lin in linears]
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._packed_at: list[tuple[int, int | None]] = []  # the layers' (weight, bias) addresses when packed
        self.enabled = True  # trainers turn this off: FSDP and torch.compile own the parameter storage

    def _concat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layers' weights stacked row-wise, and their biases if every layer has one."""
        weight = torch.cat([lin.weight for lin in self.linears])
        has_bias = all(lin.bias is not None for lin in self.linears)
        return weight, torch.cat([lin.bias for lin in self.linears]) if has_bias else None

    def _addresses(self) -> list[tuple[int, int | None]]:
        return [(lin.weight.data_ptr(), None if lin.bias is None else lin.bias.data_ptr()) for lin in self.linears]

    def _is_packed(self) -> bool:
        # The packed matrix keeps the old storage alive, so a replaced weight always has a new address.
        return self.weight is not None and self._addresses() == self._packed_at

    @torch.no_grad()
    def _pack(self) -> None:
        self.weight, self.bias = self._concat()
        row = 0
        for lin in self.linears:
            lin.weight.data = self.weight[row:row + lin.out_features]
            if self.bias is not None:
                lin.bias.data = self.bias[row:row + lin.out_features]
            row += lin.out_features
        self._packed_at = self._addresses()

    def usable(self) -> bool:
        """True when no gradient is wanted and the weights are plain local tensors (not sharded DTensors)."""
        w = self.linears[0].weight
        return self.enabled and not (torch.is_grad_enabled() and w.requires_grad) and type(w.data) is torch.Tensor

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.usable():
            # Autograd (training, FSDP, compile): concatenate the weights, a small copy next to the activations,
            # so the input is cast once under autocast and one larger matmul replaces several.
            return F.linear(x, *self._concat()).split(self.sizes, dim=-1)
        if not self._is_packed():
            self._pack()
        return linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) in fp32, as transformers computes it, in one fused kernel
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

        self._gate_up = FusedProjection(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self._gate_up(x)
        return self.down_proj(F.silu(gate) * up)


class AttentionMask:
    """What the attention layers need to know about masking, built once per forward.

    `dense` is a boolean [B, 1, T, S] mask (True = attend) or None. With None, `causal` says whether the
    queries are causal among themselves (prefill of a fresh sequence) or see every key (one-token decode).
    `past` is the number of cached tokens before these queries and `padded` whether any row has padding.
    An unpadded chunk after cached tokens needs a causal mask aligned to the end; it is built on first use,
    so a long-context attention that splits the keys instead never pays for a [T, S] mask.
    """

    def __init__(self, dense: torch.Tensor | None, causal: bool, past: int = 0, padded: bool = False,
                 deferred: tuple[int, int, torch.device] | None = None) -> None:
        self._dense = dense
        self.causal = causal
        self.past = past
        self.padded = padded
        self._deferred = deferred  # (batch, q_len, device) of a chunk mask not built yet

    @property
    def dense(self) -> torch.Tensor | None:
        if self._deferred is not None:
            batch, q_len, device = self._deferred
            self._dense = _causal_allowed(q_len, self.past, device).expand(batch, 1, q_len, self.past + q_len)
            self._deferred = None
        return self._dense

    @classmethod
    def build(cls, attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int,
              device: torch.device, segment_ids: torch.Tensor | None = None) -> AttentionMask:
        """attention_mask: [B, past + q_len], 1 for real tokens and 0 for padding, or None.
        segment_ids: [B, q_len] (no cache): tokens attend only within their own segment (packed documents)."""
        if attention_mask is not None and attention_mask.shape != (batch, past + q_len):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                             f"{(batch, past + q_len)} (past {past} + new {q_len} tokens)")
        if segment_ids is not None:
            if past or segment_ids.shape != (batch, q_len):
                raise ValueError(f"segment_ids must be [batch, seq] = {(batch, q_len)} without a cache, got "
                                 f"{tuple(segment_ids.shape)} with {past} cached tokens")
            idx = torch.arange(q_len, device=device)
            causal = (idx[None, :] <= idx[:, None])[None]
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            return cls((causal & same).unsqueeze(1), causal=False)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or q_len == 1):
            return cls(None, causal=q_len > 1, past=past)
        if not padded:
            return cls(None, causal=False, past=past, deferred=(batch, q_len, device))
        allowed = _causal_allowed(q_len, past, device) & attention_mask[:, None, None, :].bool()
        # A padding query would see no key at all (a NaN row); let it see itself. Its output is never used.
        q_idx = torch.arange(past, past + q_len, device=device)
        allowed = allowed | (torch.arange(past + q_len, device=device)[None, :] == q_idx[:, None])[None, None]
        return cls(allowed, causal=False, past=past, padded=True)


def _causal_allowed(q_len: int, past: int, device: torch.device) -> torch.Tensor:
    """[1, 1, q_len, past + q_len]: query i (at position past + i) may see keys up to its own position."""
    q_idx = torch.arange(past, past + q_len, device=device)
    k_idx = torch.arange(past + q_len, device=device)
    return (k_idx[None, :] <= q_idx[:, None])[None, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.kv_head_dim
        self.q_proj = Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self._qkv = FusedProjection(self.q_proj, self.k_proj, self.v_proj)
        # A long-context attention (qwen25.longctx: dual chunk, sparse prefill, chunked prefill) or None for
        # dense SDPA. It gets q/k before RoPE, because dual chunk attention rotates them with its own positions.
        self.backend = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: AttentionMask,
                cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._qkv(x)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.backend is not None:
            out = self.backend(q, k, v, cos, sin, mask, cache, self.layer_idx)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)
            out = sdpa_gqa(q, k, v, mask)  # [B, heads, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """Scaled dot-product attention with grouped kv heads: q [B, H, T, D], k/v [B, KV, S, D]."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    if T == 1 and groups > 1:
        # One query per head: fold each kv head's query group into the query axis, so attention runs on
        # the kv heads directly with no repeated keys (the same trick transformers uses for decode).
        qg = q.reshape(B, k.shape[1], groups, D)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask.dense, scale=D**-0.5)
        return out.reshape(B, H, 1, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, is_causal=mask.causal,
                                          scale=D**-0.5, enable_gqa=groups > 1)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer_idx):
            from qwen25.model.moe import SparseMoeBlock  # moe.py builds on this file's MLP and Linear

            self.mlp = SparseMoeBlock(cfg)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: AttentionMask,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """Embeddings, decoder layers and the final norm: ids -> final hidden states."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.kv_head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.checkpoint_layers = False  # activation checkpointing: recompute each layer in backward
        # [B, T] mask of the last forward's tokens (None: all real); MoE router statistics leave padding out.
        self.token_mask: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, B, T, past, input_ids.device)
        self.token_mask = None if attention_mask is None else attention_mask[:, past:]
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
        mask = AttentionMask.build(attention_mask, B, T, past, input_ids.device, segment_ids)
        for layer in self.layers:
            if self.checkpoint_layers and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, mask, cache, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(h)


def default_position_ids(attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int,
                         device: torch.device) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded row gets the positions it would have alone."""
    if attention_mask is None:
        return torch.arange(past, past + q_len, device=device).unsqueeze(0).expand(batch, q_len)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]


class Qwen2ForCausalLM(nn.Module):
    """`model(ids)` -> logits [B, T, vocab]; `model(ids, labels=targets)` -> summed cross-entropy over the
    targets that are not -100 (the trainer divides by its global token count, which makes gradient
    accumulation and data parallelism exact)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.generation_config: dict = {}
        self.model = Qwen2Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if cfg.dual_chunk_attention_config is not None:  # Qwen2.5-1M: served with dual chunk attention, as vLLM
            from qwen25.longctx import configure

            configure(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, labels: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        h = self.model(input_ids, attention_mask, position_ids, cache, segment_ids)
        if labels is not None:
            return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, labels.reshape(-1))
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h)

    def router_stats(self) -> RouterStats | None:
        """MoE models: aux loss and per-expert load of the last forward, padding excluded (`moe.RouterStats`;
        the training loss is `ce + stats.weighted_aux_loss`). None for dense models."""
        from qwen25.model.moe import router_stats

        return router_stats(self)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_fused_projections(self, enabled: bool) -> None:
        """Turn the inference-time q/k/v and gate/up fusion on or off (see `FusedProjection`)."""
        for module in self.modules():
            for fused in vars(module).values():
                if isinstance(fused, FusedProjection):
                    fused.enabled = enabled

    def set_rope(self, theta: float, scaling: dict | None = None) -> None:
        """Change the RoPE base (ABF between pretraining stages) or scaling, keeping config in step."""
        self.config = self.config.replace(rope_theta=theta, rope_scaling=scaling)
        self.model.rotary_emb.configure(theta, scaling)

    def save_pretrained(self, directory, dtype: torch.dtype | None = None, max_shard_bytes: int = 5 * 2**30) -> None:
        from qwen25.model.checkpoint import save_pretrained

        save_pretrained(self, directory, dtype=dtype, max_shard_bytes=max_shard_bytes)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """transformers' init: normal(0, initializer_range) for linear, embedding and expert weights, zero
        biases, ones for norms."""
        from qwen25.model.moe import Experts

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


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {list(_DTYPES)}")
    return _DTYPES[name]


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


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameters; tied embeddings count once, the LM head counts as embedding."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    embedding = {id(model.model.embed_tokens.weight): model.model.embed_tokens.weight.numel(),
                 id(model.lm_head.weight): model.lm_head.weight.numel()}
    return total, total - sum(embedding.values())
