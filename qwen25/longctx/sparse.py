"""Sparse prefill (MInference): per head, attend only to a few key columns and diagonals, block by block.

Vertical-slash: the last 64 queries of the prompt score every key; the keys with the largest column sums
become "vertical" columns (the first 30 always kept) and the diagonals with the largest sums become
"slashes" (the 100 nearest always kept). Every query then attends to those columns and diagonals only.
A-shape: the first tokens (sinks) plus a local window, with no estimation.

Layout. Queries and keys are cut into blocks of `block` positions (128) counted from position 0. A slash
is kept as a block diagonal d: query block b sees all of key block b - d. The slash budget is spent in
whole block diagonals (ceil(slash / block) of them), ranked by the attention mass the last queries put on
them. This is coarser than MInference's CUDA kernel, which covers each chosen single diagonal with a
64-wide tile and so computes up to 64x its budget when the diagonals scatter; here the work per query is
fixed at about (slash + vertical) keys. Query blocks that see the same diagonals run as one batched call
of PyTorch's fused attention over their gathered key blocks, and the parts (own block causal, other
diagonals, columns) merge exactly by log-sum-exp. A column inside a block diagonal that the query block
already attends is dropped there, so no key is counted twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qwen25.longctx.chunked import causal_attention
from qwen25.longctx.partial import attend, merge_with_lse
from qwen25.model.config import SparseHeadPattern, parse_sparse_patterns
from qwen25.model.kv_cache import KVCache
from qwen25.model.attention import AttentionMask
from qwen25.model.rope import apply_rotary

BLOCK = 128  # MInference's CUDA kernel uses 64; 128 halves the key gathers per query on a CPU
LAST_Q = 64
SINK_COLUMNS = 30  # always-kept first keys (MInference: vertical[..., :30] = inf)
NEAR_SLASHES = 100  # always-kept nearest diagonals (MInference: slash[..., -100:] = inf)
MIN_VERTICAL, MIN_SLASH = 30, 50  # MInference's floors on the budgets
DEFAULT_PATTERN = SparseHeadPattern("vertical_and_slash", 1000, 6096)  # MInference's default per head
_KEYS_PER_CALL = 1 << 16  # gathered keys per batched call: bounds the working memory


@dataclass(frozen=True)
class Selection:
    """What one head of one sequence attends to: block diagonals and single key columns (absolute positions)."""

    diagonals: torch.Tensor  # int64, sorted, always contains 0
    columns: torch.Tensor  # int64 key positions


@dataclass(frozen=True)
class SparseConfig:
    """Per-layer, per-head patterns (None: DEFAULT_PATTERN everywhere), the prompt length above which sparse
    prefill replaces dense attention, how many last queries estimate the pattern, and the block size."""

    patterns: tuple[tuple[SparseHeadPattern, ...], ...] | None = None
    threshold: int = 32768
    last_q: int = LAST_Q
    block: int = BLOCK

    def __post_init__(self) -> None:
        for name, low in (("threshold", 0), ("last_q", 1), ("block", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"sparse prefill setting '{name}' must be an integer >= {low}, got {value!r}")

    def pattern(self, layer: int, head: int) -> SparseHeadPattern:
        return DEFAULT_PATTERN if self.patterns is None else self.patterns[layer][head]


def load_patterns(path: str | Path, num_layers: int, num_heads: int) -> tuple[tuple[SparseHeadPattern, ...], ...]:
    """Per-head budgets from a JSON file in MInference's format (e.g. its Qwen2.5-7B-Instruct best patterns)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a sparse pattern JSON file ({e})") from None
    try:
        return parse_sparse_patterns(raw, num_layers, num_heads, where=path.name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def a_shape(pattern: SparseHeadPattern, block: int = BLOCK) -> Selection:
    """Sinks (the first `vertical` keys) and a local window of `slash` keys, rounded up to whole blocks."""
    return Selection(torch.arange(math.ceil(pattern.slash / block) + 1), torch.arange(pattern.vertical))


def vertical_slash(scores: torch.Tensor, q_pos: torch.Tensor, pattern: SparseHeadPattern,
                   block: int = BLOCK) -> Selection:
    """Choose columns and block diagonals from the last queries' scores.

    scores [Q, S]: scaled q.k of the Q last queries (absolute positions q_pos) against keys 0..S-1, with -inf
    where a key lies after the query.
    """
    probs = scores.float().softmax(-1)
    S = probs.shape[1]
    vertical = probs.sum(0)
    vertical[:SINK_COLUMNS] = float("inf")
    columns = vertical.topk(min(S, max(pattern.vertical, MIN_VERTICAL))).indices
    # Attention mass per block diagonal d = (query block) - (key block), from every last query.
    n_kb = math.ceil(S / block)
    per_block = F.pad(probs, (0, n_kb * block - S)).view(len(q_pos), n_kb, block).sum(-1)  # [Q, key blocks]
    d = (q_pos // block)[:, None] - torch.arange(n_kb, device=probs.device)[None, :]
    n_diag = int(q_pos.max()) // block + 1
    slash = torch.zeros(n_diag, device=probs.device).index_put_((d.clamp(min=0),), per_block * (d >= 0),
                                                                accumulate=True)
    slash[: math.ceil(NEAR_SLASHES / block) + 1] = float("inf")
    n_keep = min(n_diag, max(math.ceil(max(pattern.slash, MIN_SLASH) / block), math.ceil(NEAR_SLASHES / block) + 1))
    diagonals = slash.topk(n_keep).indices.sort().values
    return Selection(diagonals, columns)


def select_heads(config: SparseConfig, layer: int, batch: int, heads: int, q_pos: torch.Tensor,
                 score: Callable[[int, int], torch.Tensor]) -> list[list[Selection]]:
    """selections[b][h] for one layer: A-shape for stream_llm heads (no scoring needed), else vertical-slash
    from score(b, h), the scores [Q, S] of the last queries (positions q_pos) as `vertical_slash` takes them."""
    out = []
    for b in range(batch):
        row = []
        for h in range(heads):
            pattern = config.pattern(layer, h)
            if pattern.kind == "stream_llm":
                row.append(a_shape(pattern, config.block))
            else:
                row.append(vertical_slash(score(b, h), q_pos, pattern, config.block))
        out.append(row)
    return out


def covers_all(selections: list[list[Selection]], q_end: int, block: int = BLOCK) -> bool:
    """True when every head keeps every block diagonal up to the last query: then the result is dense
    attention, and the dense kernel computes it faster (short prompts under a long-prompt budget)."""
    need = math.ceil(q_end / block)
    return all(int((sel.diagonals.unique() < need).sum()) == need for heads in selections for sel in heads)


def sparse_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selections: list[list[Selection]],
                  q_start: int, k_start: int, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention restricted to each head's selection -> (out [B, H, T, D], lse [B, H, T] fp32).

    q [B, H, T, D] holds positions q_start.. and k/v [B, KV, S, D] positions k_start.. (a multiple of
    `block`); the keys must end on a block boundary or at the last query, so padding keys are never visible.
    selections[b][h] is in absolute positions; parts outside the key range are ignored. A query that sees
    no key (possible when the keys are an earlier part of the sequence) gets output 0 and lse -inf.
    """
    B, H, T, D = q.shape
    groups, S = H // k.shape[1], k.shape[2]
    if k_start % block or ((k_start + S) % block and k_start + S != q_start + T):
        raise ValueError(f"keys {k_start}..{k_start + S} must start on a block of {block} and end on one or "
                         f"at the last query ({q_start + T})")
    qb0, kb0 = q_start // block, k_start // block
    n_qb, n_kb = math.ceil((q_start + T) / block) - qb0, math.ceil(S / block)
    front = q_start - qb0 * block
    qs = F.pad(q, (0, 0, front, n_qb * block - T - front)).view(B, H, n_qb, block, D)
    ks = F.pad(k, (0, 0, 0, n_kb * block - S)).view(B, k.shape[1], n_kb, block, D)
    vs = F.pad(v, (0, 0, 0, n_kb * block - S)).view(B, k.shape[1], n_kb, block, D)
    out = q.new_empty(B, H, n_qb * block, D)
    lse = torch.empty(B, H, n_qb * block, device=q.device)
    for b in range(B):
        for h in range(H):
            parts = _head_parts(qs[b, h], ks[b, h // groups], vs[b, h // groups], selections[b][h], qb0, kb0, S,
                                k_start, block)
            out[b, h], lse[b, h] = merge_with_lse(parts)
    return out[:, :, front:front + T], lse[:, :, front:front + T]


def _head_parts(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, sel: Selection, qb0: int, kb0: int, S: int,
                k_start: int, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One head, as up to three disjoint parts (out [rows, D], lse [rows]) over all padded query rows:
    the causal diagonal block, the other selected block diagonals, and the columns outside them."""
    n_qb, n_kb, D = qs.shape[0], ks.shape[0], qs.shape[-1]
    scale = D**-0.5
    q_blocks = torch.arange(qb0, qb0 + n_qb, device=qs.device)  # absolute query block numbers
    empty = (qs.new_zeros(n_qb * block, D), torch.full((n_qb * block,), float("-inf"), device=qs.device))
    parts = []
    diagonals = sel.diagonals.to(qs.device).unique()  # sorted
    # Diagonal 0: each query block with its own key block, causal. The key blocks form one contiguous run.
    own = (q_blocks - kb0 >= 0) & (q_blocks - kb0 < n_kb)
    if bool(own.any()) and bool((diagonals == 0).any()):
        first, last = int(own.nonzero()[0]), int(own.nonzero()[-1]) + 1
        o, l = attend(qs[first:last, None], ks[first + qb0 - kb0:last + qb0 - kb0, None],
                      vs[first + qb0 - kb0:last + qb0 - kb0, None], True, scale)
        part = (empty[0].clone(), empty[1].clone())
        part[0][first * block:last * block], part[1][first * block:last * block] = o.reshape(-1, D), l.reshape(-1)
        parts.append(part)
    # Other block diagonals: query block b sees key blocks b - d for the d in range. Consecutive query blocks
    # with the same diagonals in range share one batched call over their gathered key blocks.
    others = diagonals[diagonals > 0]
    if len(others):
        lo = torch.searchsorted(others, q_blocks - kb0 - n_kb, right=True)
        hi = torch.searchsorted(others, q_blocks - kb0, right=True)
        part = (empty[0].clone(), empty[1].clone())
        bounds = torch.cat([torch.tensor([0], device=qs.device),
                            ((lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])).nonzero()[:, 0] + 1,
                            torch.tensor([n_qb], device=qs.device)]).tolist()
        for g_start, g_end in zip(bounds[:-1], bounds[1:]):
            d = others[int(lo[g_start]):int(hi[g_start])]
            if not len(d):
                continue
            step = max(1, _KEYS_PER_CALL // (len(d) * block))
            for s0 in range(g_start, g_end, step):
                s1 = min(s0 + step, g_end)
                idx = (q_blocks[s0:s1, None] - d[None, :] - kb0).reshape(-1)
                kk = ks.index_select(0, idx).view(s1 - s0, 1, len(d) * block, D)
                vv = vs.index_select(0, idx).view(s1 - s0, 1, len(d) * block, D)
                o, l = attend(qs[s0:s1, None], kk, vv, False, scale)
                part[0][s0 * block:s1 * block], part[1][s0 * block:s1 * block] = o.reshape(-1, D), l.reshape(-1)
        parts.append(part)
    # Columns: a key column counts for a query block when it lies in an earlier block that no selected
    # diagonal already covers (its own block is diagonal 0, always selected).
    columns = sel.columns.to(qs.device).unique()
    columns = columns[(columns >= k_start) & (columns < k_start + S)]
    if len(columns):
        covered = torch.zeros(n_qb + qb0 + 1, dtype=torch.bool, device=qs.device)
        covered[diagonals[diagonals <= n_qb + qb0]] = True
        col_d = q_blocks[:, None] - torch.div(columns, block, rounding_mode="floor")[None, :]  # [n_qb, C]
        hidden = (col_d <= 0) | covered[col_d.clamp(min=0)]
        bias = torch.zeros(col_d.shape, dtype=qs.dtype, device=qs.device).masked_fill_(hidden, float("-inf"))
        kc = ks.view(-1, D)[columns - k_start].expand(n_qb, 1, -1, D)
        vc = vs.view(-1, D)[columns - k_start].expand(n_qb, 1, -1, D)
        o, l = attend(qs[:, None], kc, vc, False, scale, bias[:, None, None, :])
        parts.append((o.reshape(-1, D), l.reshape(-1)))
    return parts or [empty]


class SparseAttention:
    """Attention backend: sparse prefill for prompts longer than the threshold, dense attention otherwise
    (decode, short prompts). RoPE as the model applies it."""

    def __init__(self, config: SparseConfig) -> None:
        self.config = config

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 mask: AttentionMask, cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        T, S = q.shape[2], k.shape[2]
        prompt = cache.request_length(S) if cache is not None else S
        if T == 1 or prompt <= self.config.threshold:
            return causal_attention(q, k, v, mask)
        if mask.padded:
            raise ValueError("sparse prefill runs unpadded prompts; give prompts of equal length or one at a time")
        selections = self.select(q, k, layer, q_start=S - T)
        if covers_all(selections, S, self.config.block):
            return causal_attention(q, k, v, mask)
        return sparse_attend(q, k, v, selections, q_start=S - T, k_start=0, block=self.config.block)[0]

    def select(self, q: torch.Tensor, k: torch.Tensor, layer: int, q_start: int) -> list[list[Selection]]:
        """Each head's selection, estimated from the last `last_q` queries (rotated q, keys 0..S-1)."""
        B, H, T, D = q.shape
        groups, n_last = H // k.shape[1], min(self.config.last_q, T)
        q_pos = torch.arange(q_start + T - n_last, q_start + T, device=q.device)
        future = torch.arange(k.shape[2], device=q.device)[None, :] > q_pos[:, None]
        return select_heads(self.config, layer, B, H, q_pos, lambda b, h: (
            q[b, h, -n_last:] @ k[b, h // groups].T * D**-0.5).masked_fill_(future, float("-inf")))
