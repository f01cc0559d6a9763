"""Attention over part of the keys, with its log-sum-exp, and the exact merge of such parts.

Softmax attention over keys split into disjoint parts can be put back together exactly: part p gives its
normalised output `out_p` and `lse_p = logsumexp(scores_p)`, and the whole is
`sum_p exp(lse_p - logsumexp(lse)) * out_p` (SPEC §5). Dual chunk attention needs this because each part
uses differently rotated queries; chunked prefill uses it to attend to cached keys without a [T, S] mask.
"""

from __future__ import annotations

import torch

# Query rows per step of the portable path: bounds its score matrix to rows x keys.
_ROWS = 1024


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
           bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, T, D], k/v [B, KV, S, D] (GQA when KV < H) -> out [B, H, T, D], lse [B, H, T] in fp32.

    `causal` needs T == S (query i sees keys 0..i). `bias` is added to the scores (broadcast to [B, H, T, S];
    -inf hides a key); a row whose keys are all hidden gets output 0 and lse -inf. On CPU this is PyTorch's
    flash-attention kernel, which returns the log-sum-exp and never holds a T x S matrix; elsewhere a
    row-blocked matmul path.
    """
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    if causal and T != k.shape[2]:
        raise ValueError(f"causal partial attention needs as many queries as keys, got {T} and {k.shape[2]}")
    if q.device.type != "cpu":
        return _attend_math(q, k, v, causal, scale, bias)
    if groups > 1 and (causal or bias is not None):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    elif groups > 1:  # no mask, so each kv head's query group can share one call as extra rows
        q = q.reshape(B, k.shape[1], groups * T, D)
    # The kernel reads the head dimension as unit-stride; public SDPA checks that, the private op does not.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=bias, scale=scale)[:2]
    out, lse = out.reshape(B, H, T, D), lse.reshape(B, H, T).float()
    if bias is not None:  # the kernel leaves fully hidden rows at lse 0; make them empty
        dead = torch.isinf(bias).all(-1).expand(B, H, T)
        out, lse = out.masked_fill(dead[..., None], 0.0), lse.masked_fill(dead, float("-inf"))
    return out, lse


def _attend_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                 bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result with plain matmuls, `_ROWS` query rows at a time (fp32 scores)."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    qg = q.reshape(B, k.shape[1], groups, T, D)
    kf, vf = k.float()[:, :, None], v.float()[:, :, None]
    if bias is not None:
        bias = bias.expand(B, H, T, k.shape[2]).reshape(B, k.shape[1], groups, T, k.shape[2])
    outs, lses = [], []
    for start in range(0, T, _ROWS):
        rows = qg[:, :, :, start:start + _ROWS].float()
        scores = rows @ kf.transpose(-1, -2) * scale  # [B, KV, G, rows, S]
        if bias is not None:
            scores = scores + bias[:, :, :, start:start + _ROWS]
        if causal:
            q_pos = torch.arange(start, start + rows.shape[3], device=q.device)
            future = torch.arange(k.shape[2], device=q.device)[None, :] > q_pos[:, None]
            scores = scores.masked_fill(future, float("-inf"))
        lse = scores.logsumexp(-1)
        outs.append((torch.exp(scores - lse[..., None]) @ vf).nan_to_num_(0.0))
        lses.append(lse)
    out = torch.cat(outs, dim=3).reshape(B, H, T, D).to(q.dtype)
    return out, torch.cat(lses, dim=3).reshape(B, H, T)


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine (out, lse) of disjoint key sets into attention over their union."""
    return merge_with_lse(parts)[0]


def merge_with_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`merge`, also returning the union's lse. A row that sees no key in any part gets 0 and lse -inf."""
    if len(parts) == 1:
        return parts[0]
    lse = torch.stack([p[1] for p in parts])  # [P, ..., T]
    top = lse.max(0).values
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)  # all -inf: keep exp() finite
    weights = torch.exp(lse - top)
    total = weights.sum(0)
    weights = weights / total.clamp(min=torch.finfo(total.dtype).tiny)
    out = sum(w[..., None] * p[0].float() for w, p in zip(weights, parts))
    return out.to(parts[0][0].dtype), top + total.log()


def attend_after_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention for T new queries whose keys are the last T of k/v [B, KV, past + T, D].

    The cached keys need no mask and the new ones a square causal mask, so the two parts run separately and
    merge exactly; nothing of size T x (past + T) is built.
    """
    return merge(causal_parts(q, k, v, scale))


def causal_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The parts of `attend_after_cache`: the new keys (square causal), then the earlier keys (no mask) when
    there are any. Dual chunk attention appends its other chunks' parts after these (`merge` sums in order)."""
    T, S = q.shape[2], k.shape[2]
    parts = [attend(q, k[:, :, S - T:], v[:, :, S - T:], True, scale)]
    if S > T:
        parts.append(attend(q, k[:, :, :S - T], v[:, :, :S - T], False, scale))
    return parts
