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

from qwen25.longctx.partial import attend, causal_parts, merge
from qwen25.longctx.sparse import Selection, SparseConfig, covers_all, select_heads, sparse_attend
from qwen25.model.config import DualChunkConfig
from qwen25.model.kv_cache import KVCache
from qwen25.model.attention import AttentionMask
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
    sparse prefill inside each chunk (as Qwen2.5-1M serves it), which needs chunk_len % sparse.block == 0.

    `configure` gives every layer this one instance, so the rotary tables, which depend only on the positions,
    are built by the first layer of a forward and reused by the others (`_table`)."""

    def __init__(self, config: DualChunkConfig, rotary: RotaryEmbedding, sparse: SparseConfig | None = None) -> None:
        if sparse is not None and config.chunk_len % sparse.block:
            raise ValueError(f"sparse prefill inside dual chunk attention needs chunk_size - local_size "
                             f"({config.chunk_len}) to be a multiple of the sparse block ({sparse.block})")
        self.config = config
        self.rotary = rotary
        self.sparse = sparse
        self._memo_key: tuple | None = None  # (past, end, dtype, device) of the forward the tables serve
        self._memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, name: tuple, positions, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [1, n, D] for the rotary positions `positions()` builds, made once per forward under `name`:
        a chunk's tables depend on its offset in the chunk and its length, so full chunks share theirs."""
        if name not in self._memo:
            self._memo[name] = self.rotary(positions()[None], dtype)
        return self._memo[name]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor:
        if mask.padded:
            raise ValueError("dual chunk attention runs unpadded batches; give prompts of equal length or one "
                             "at a time")
        B, H, T, D = q.shape
        L, c = self.config.chunk_len, self.config.chunk_size
        past, end = mask.past, mask.past + T
        length = cache.request_length(end) if cache is not None else end
        s = logit_scale(length, self.config.original_max_position_embeddings)
        if layer == 0 or self._memo_key != (past, end, q.dtype, q.device):  # layer 0: never a stale rotary
            self._memo_key, self._memo = (past, end, q.dtype, q.device), {}
        cos, sin = self._table(("keys",), lambda: torch.arange(past, end, device=q.device) % L, q.dtype)
        k = apply_rotary(k, cos, sin)
        if s != 1.0:
            q, k = q * s, k * s
        if cache is not None:
            k, v = cache.update(layer, k, v)
        use_sparse = self.sparse is not None and T > 1 and length > self.sparse.threshold
        outs = []
        for chunk in range(past // L, (end - 1) // L + 1):
            a0, a1 = max(past, chunk * L), min(end, (chunk + 1) * L)
            rows, own = q[:, :, a0 - past:a1 - past], (cos[:, a0 - past:a1 - past], sin[:, a0 - past:a1 - past])
            q_own = apply_rotary(rows, *own)  # the keys' table: i mod L
            ranges = [(chunk * L, a1, q_own)]  # (first key, end key, rotated queries), newest first
            if chunk >= 1:
                prev, older = self._chunk_tables(a0, a1, q.device, q.dtype)
                ranges.append(((chunk - 1) * L, chunk * L, apply_rotary(rows, *prev)))
                if chunk >= 2:
                    ranges.append((0, (chunk - 1) * L, apply_rotary(rows, *older)))
            sel = self._select(rows, own, a0, a1, k, chunk, layer) if use_sparse else None
            if sel is not None and not covers_all(sel, a1, self.sparse.block):
                parts = [sparse_attend(qr, k[:, :, k0:k1], v[:, :, k0:k1], sel, a0, k0, self.sparse.block)
                         for k0, k1, qr in ranges]
            else:
                parts = self._dense_parts(ranges, a0, k, v)
            outs.append(merge(parts))
        return torch.cat(outs, dim=2)

    def _chunk_tables(self, a0: int, a1: int, device: torch.device, dtype: torch.dtype) -> tuple[tuple, tuple]:
        """cos/sin of the queries a0..a1 (one chunk) against the previous chunk and against older chunks."""
        L, c = self.config.chunk_len, self.config.chunk_size
        name = (a0 % L, a1 - a0)
        return (self._table(("prev", *name), lambda: query_positions(torch.arange(a0, a1, device=device), L, c)[1],
                            dtype),
                self._table(("older", *name), lambda: query_positions(torch.arange(a0, a1, device=device), L, c)[2],
                            dtype))

    @staticmethod
    def _dense_parts(ranges: list, a0: int, k: torch.Tensor,
                     v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The own chunk splits into the queries' own keys (square causal) and earlier keys (no mask)."""
        scale = k.shape[-1] ** -0.5
        (k0, k1, q_own), *others = ranges
        if q_own.shape[2] == 1:  # one query sees its whole chunk so far
            parts = [attend(q_own, k[:, :, k0:k1], v[:, :, k0:k1], False, scale)]
        else:
            parts = causal_parts(q_own, k[:, :, k0:k1], v[:, :, k0:k1], scale)
        return parts + [attend(qr, k[:, :, k0:k1], v[:, :, k0:k1], False, scale) for k0, k1, qr in others]

    def _select(self, rows: torch.Tensor, own: tuple[torch.Tensor, torch.Tensor], a0: int, a1: int, k: torch.Tensor,
                chunk: int, layer: int) -> list[list[Selection]]:
        """Sparse patterns for one chunk's queries, estimated as vLLM does from its last queries scored against
        every earlier key, with unclamped positions (i mod L + L for the previous chunk, + c for older ones).
        `own`: the rows' cos/sin against their own chunk."""
        L, c, cfg = self.config.chunk_len, self.config.chunk_size, self.sparse
        B, H, _, D = rows.shape
        groups, n_last = H // k.shape[1], min(cfg.last_q, rows.shape[2])
        last, last_pos = rows[:, :, -n_last:], torch.arange(a1 - n_last, a1, device=rows.device)
        name = (a0 % L, a1 - a0)
        older = self._table(("estimate older", *name), lambda: last_pos % L + c, rows.dtype)
        prev = self._table(("estimate prev", *name), lambda: last_pos % L + L, rows.dtype)
        rotated = [apply_rotary(last, *older), apply_rotary(last, *prev),
                   apply_rotary(last, own[0][:, -n_last:], own[1][:, -n_last:])]  # against older, previous, own
        bounds = [0, max(0, (chunk - 1) * L), chunk * L, a1]
        future = torch.arange(chunk * L, a1, device=k.device)[None, :] > last_pos[:, None]

        def score(b: int, h: int) -> torch.Tensor:
            keys = k[b, h // groups]
            scores = torch.cat([rot[b, h] @ keys[k0:k1].T for rot, k0, k1 in
                                zip(rotated, bounds[:-1], bounds[1:])], dim=-1) * D**-0.5
            scores[:, chunk * L:].masked_fill_(future, float("-inf"))
            return scores

        return select_heads(cfg, layer, B, H, last_pos, score)
