"""Attention: the mask each forward needs, grouped-query SDPA, the attention layer, and the backends that
replace dense attention for long inputs.

A backend is any callable `(q, k, v, cos, sin, mask, cache, layer) -> out` taking q/k before RoPE. The model
knows only dense SDPA; long-context backends (chunked prefill, dual chunk attention, sparse prefill) live in
`qwen25.longctx`, register a factory here by name, and a loader picks one from the config
(`make_backend`), so this package never imports the long-context code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from qwen25.model.config import ModelConfig
from qwen25.model.kv_cache import KVCache
from qwen25.model.layers import FusedProjection, Linear
from qwen25.model.rope import apply_rotary


class AttentionBackend(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor: ...


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


    @classmethod
    def for_rows(cls, lengths: list[int], q_len: int, device: torch.device) -> AttentionMask:
        """The mask of a ragged KV cache (`KVCache.ragged`): row b's query t sits at position lengths[b] + t and
        sees that row's keys up to its own position; the slots after a shorter row's keys stay hidden."""
        q_pos = torch.tensor(lengths, device=device)[:, None] + torch.arange(q_len, device=device)  # [B, T]
        allowed = torch.arange(max(lengths) + q_len, device=device) <= q_pos[..., None]  # [B, T, S]
        return cls(allowed[:, None], causal=False, past=max(lengths), padded=True)


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: AttentionMask,
                cache: KVCache | None, backend: AttentionBackend | None = None) -> torch.Tensor:
        """`backend`: a long-context attention (None: dense SDPA). It gets q/k before RoPE, because dual chunk
        attention rotates them with positions of its own."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        out = (backend or dense_attention)(q, k, v, cos, sin, mask, cache, self.layer_idx)  # [B, heads, T, D]
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


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor:
    """The default backend: RoPE, the KV cache, then grouped-query SDPA."""
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    return sdpa_gqa(q, k, v, mask)


# name -> factory(model, **options) -> backend; "dense" is None (the model's own SDPA path)
_BACKENDS: dict[str, Callable[..., AttentionBackend | None]] = {"dense": lambda model, **options: None}


def register_backend(name: str, factory: Callable[..., AttentionBackend | None]) -> None:
    """Make an attention backend available by name (`qwen25.longctx` registers its own on import)."""
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def make_backend(name: str, model: nn.Module, **options: Any) -> AttentionBackend | None:
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(backend_names())} "
                         "(long-context backends register when qwen25.longctx is imported)")
    return _BACKENDS[name](model, **options)
