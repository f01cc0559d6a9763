"""Chunked prefill: feed a long prompt through the model N tokens at a time, so no step holds activations
or attention scores for the whole prompt.

Each chunk attends to the cached keys without a mask and to its own keys with a square causal mask, merged
exactly by log-sum-exp (`partial.attend_after_cache`); the default path would build a [N, past + N] mask.
"""

from __future__ import annotations

import torch

from qwen25.longctx.partial import attend_after_cache
from qwen25.model.kv_cache import KVCache
from qwen25.model.attention import AttentionMask, sdpa_gqa
from qwen25.model.rope import apply_rotary


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """Dense causal attention of rotated q [B, H, T, D] over k/v [B, KV, past + T, D], mask-free for chunks."""
    if mask.past and q.shape[2] > 1 and not mask.padded:
        return attend_after_cache(q, k, v, q.shape[-1] ** -0.5)
    return sdpa_gqa(q, k, v, mask)


class ChunkedAttention:
    """Attention backend for chunked prefill with dense attention: RoPE as the model applies it, then
    `causal_attention`."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return causal_attention(q, k, v, mask)


@torch.inference_mode()
def prefill(model: torch.nn.Module, ids: torch.Tensor, cache: KVCache, chunk_size: int | None = None) -> torch.Tensor:
    """Run the prompt ids [B, T] into `cache`, `chunk_size` tokens per forward (None: all at once).

    Returns the logits of the last position [B, vocab]. The cache learns the whole prompt's length first, so
    per-request choices (dynamic YaRN's factor, dual chunk attention's logit scale) see all of it.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    T = ids.shape[1]
    cache.prompt_length = cache.length + T
    step = chunk_size or T
    for start in range(0, T, step):
        logits = model(ids[:, start:start + step], cache=cache, logits_to_keep=1).logits
    return logits[:, -1]
