"""Dual chunk attention (ChunkLlama; vLLM's implementation for Qwen2.5-1M): attention at any distance with
rotary positions that never exceed the chunk size the model was trained on.

With chunk_size c, local_size w and chunk length L = c - w, the sequence is cut into chunks of L tokens.
Keys are rotated with position j mod L. A query at i rotates three ways (SPEC §5): against keys of its own
chunk with i mod L (causal; exactly the trained relative distances), against the previous chunk with
min(i mod L + L, c), and against all older chunks with the constant min(2L - 1, c). The three partial
attentions merge by log-sum-exp. While the sequence fits in c tokens every distance is the true one, so DCA
equals dense attention there.

Beyond `original_max_position_embeddings` (when set) queries and keys are both multiplied by
s = 0.1 ln(n / original) + 1, as vLLM does, with n the prompt length during prefill and the current length
during decode; keys keep the s they were stored with. Work goes chunk by chunk through the fused attention
kernel, so memory stays bounded by the chunk, never the sequence.
"""

from __future__ import annotations

import math

import torch

from qwen25.longctx.partial import attend, merge
from qwen25.longctx.sparse import Selection, SparseConfig, a_shape, covers_all, sparse_attend, vertical_slash
from qwen25.model.config import DualChunkConfig
from qwen25.model.kv_cache import KVCache
from qwen25.model.qwen2 import AttentionMask
from qwen25.model.rope import RotaryEmbedding, apply_rotary


def query_positions(pos: torch.Tensor, chunk_len: int, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """Rotary positions of queries at absolute `pos` against (own chunk, previous chunk, older chunks)."""
    intra = pos % chunk_len
    return intra, (intra + chunk_len).clamp(max=chunk_size), torch.full_like(pos, min(2 * chunk_len - 1, chunk_size))


def logit_scale(length: int, original: int) -> float:
    """vLLM's length-based scale for queries and keys; 1 up to `original` tokens (or when `original` is 0)."""
    if original <= 0 or length <= original:
        return 1.0
    return 0.1 * math.log(length / original) + 1.0


class DualChunkAttention:
    """Attention backend: dual chunk attention for prefill (chunked or not) and decode, optionally with
    sparse prefill inside each chunk (as Qwen2.5-1M serves it), which needs chunk_len % sparse.block == 0."""

    def __init__(self, config: DualChunkConfig, rotary: RotaryEmbedding, sparse: SparseConfig | None = None) -> None:
        if sparse is not None and config.chunk_len % sparse.block:
            raise ValueError(f"sparse prefill inside dual chunk attention needs chunk_size - local_size "
                             f"({config.chunk_len}) to be a multiple of the sparse block ({sparse.block})")
        self.config = config
        self.rotary = rotary
        self.sparse = sparse

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary(positions[None], x.dtype)
        return apply_rotary(x, cos, sin)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor:
        if mask.padded:
            raise ValueError("dual chunk attention runs unpadded batches; give prompts of equal length or one "
                             "at a time")
        B, H, T, D = q.shape
        L, c = self.config.chunk_len, self.config.chunk_size
        past, end = mask.past, mask.past + T
        length = max(cache.prompt_length or 0, end) if cache is not None else end
        s = logit_scale(length, self.config.original_max_position_embeddings)
        k = self._rotate(k, torch.arange(past, end, device=q.device) % L)
        if s != 1.0:
            q, k = q * s, k * s
        if cache is not None:
            k, v = cache.update(layer, k, v)
        use_sparse = self.sparse is not None and T > 1 and length > self.sparse.threshold
        outs = []
        for chunk in range(past // L, (end - 1) // L + 1):
            a0, a1 = max(past, chunk * L), min(end, (chunk + 1) * L)
            rows, pos = q[:, :, a0 - past:a1 - past], torch.arange(a0, a1, device=q.device)
            own, prev, older = query_positions(pos, L, c)
            q_own = self._rotate(rows, own)
            ranges = [(chunk * L, a1, q_own)]  # (first key, end key, rotated queries), newest first
            if chunk >= 1:
                ranges.append(((chunk - 1) * L, chunk * L, self._rotate(rows, prev)))
            if chunk >= 2:
                ranges.append((0, (chunk - 1) * L, self._rotate(rows, older)))
            sel = self._select(rows, pos, k, chunk, layer) if use_sparse else None
            if sel is not None and not covers_all(sel, a1, self.sparse.block):
                parts = [sparse_attend(qr, k[:, :, k0:k1], v[:, :, k0:k1], sel, a0, k0, self.sparse.block)
                         for k0, k1, qr in ranges]
            else:
                parts = self._dense_parts(ranges, a0, k, v)
            outs.append(merge(parts))
        return torch.cat(outs, dim=2)

    @staticmethod
    def _dense_parts(ranges: list, a0: int, k: torch.Tensor,
                     v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The own chunk splits into earlier keys (no mask) and the queries' own keys (square causal)."""
        scale = k.shape[-1] ** -0.5
        (k0, k1, q_own), *others = ranges
        if q_own.shape[2] == 1:  # one query sees its whole chunk so far
            parts = [attend(q_own, k[:, :, k0:k1], v[:, :, k0:k1], False, scale)]
        else:
            parts = [attend(q_own, k[:, :, a0:k1], v[:, :, a0:k1], True, scale)]
            if a0 > k0:
                parts.append(attend(q_own, k[:, :, k0:a0], v[:, :, k0:a0], False, scale))
        return parts + [attend(qr, k[:, :, k0:k1], v[:, :, k0:k1], False, scale) for k0, k1, qr in others]

    def _select(self, rows: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, chunk: int,
                layer: int) -> list[list[Selection]]:
        """Sparse patterns for one chunk's queries, estimated as vLLM does from its last queries scored against
        every earlier key, with unclamped positions (i mod L + L for the previous chunk, + c for older ones)."""
        L, c, cfg = self.config.chunk_len, self.config.chunk_size, self.sparse
        B, H, _, D = rows.shape
        groups, n_last = H // k.shape[1], min(cfg.last_q, rows.shape[2])
        last, last_pos = rows[:, :, -n_last:], pos[-n_last:]
        rotated = [self._rotate(last, last_pos % L + c), self._rotate(last, last_pos % L + L),
                   self._rotate(last, last_pos % L)]  # against older, previous, own chunk
        bounds = [0, max(0, (chunk - 1) * L), chunk * L, int(last_pos[-1]) + 1]
        future = torch.arange(chunk * L, bounds[-1], device=k.device)[None, :] > last_pos[:, None]
        out = []
        for b in range(B):
            heads = []
            for h in range(H):
                pattern = cfg.pattern(layer, h)
                if pattern.kind == "stream_llm":
                    heads.append(a_shape(pattern, cfg.block))
                    continue
                keys = k[b, h // groups]
                scores = torch.cat([rot[b, h] @ keys[k0:k1].T for rot, k0, k1 in
                                    zip(rotated, bounds[:-1], bounds[1:])], dim=-1) * D**-0.5
                scores[:, chunk * L:].masked_fill_(future, float("-inf"))
                heads.append(vertical_slash(scores, last_pos, pattern, cfg.block))
            out.append(heads)
        return out
