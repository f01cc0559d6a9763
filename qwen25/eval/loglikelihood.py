"""Log-likelihoods of continuations given a context, batched, with the context computed once per question.

The choices of a multiple-choice question share their context. A batch of contexts is prefilled once
(left-padded, so every context ends at the same slot) into a KV cache; the last context position's logits give
every continuation's first token. The cache rows are then repeated, one per continuation, and the
continuations (minus their last token) run after it in one forward whose logits give the remaining tokens.
Only continuation positions go through the LM head, never the context's.

The result is what one plain forward over context + continuation gives (tested to float tolerance in fp32):
(sum of log p(continuation token), whether every continuation token is the argmax) as lm-eval defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qwen25.model.kv_cache import KVCache


@dataclass(frozen=True)
class Request:
    """One context (token ids, non-empty) and the continuations to score after it."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Score:
    logprob: float  # sum over the continuation's tokens of log p(token | everything before it)
    greedy: bool  # every continuation token is the model's argmax at its position


def truncate(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[int, ...]:
    """lm-eval's rule: keep the last max_length + 1 tokens of context + continuation (the last one is only a
    target), cutting from the left of the context."""
    if not continuation:
        raise ValueError("a continuation needs at least one token")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                         f"{max_length} positions")
    keep = max_length + 1 - len(continuation)
    return tuple(context[-keep:]) if len(context) > keep else tuple(context)


def _batches(order: list[int], requests: Sequence[Request], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Consecutive runs of `order` whose padded size (rows x longest context + continuations) fits max_tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = conts = 0
    for i in order:
        r = requests[i]
        cont_tokens = sum(len(c) for c in r.continuations)
        new_longest = max(longest, len(r.context) + max(len(c) for c in r.continuations))
        size = (len(current) + 1) * new_longest + conts + cont_tokens
        if current and (size > max_tokens or len(current) + 1 > max_rows):
            batches.append(current)
            current, longest, conts = [], 0, 0
            new_longest = len(r.context) + max(len(c) for c in r.continuations)
        current.append(i)
        longest, conts = new_longest, conts + cont_tokens
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def score_requests(model: torch.nn.Module, requests: Sequence[Request], max_tokens: int = 4096,
                   max_rows: int = 64, logit_rows: int = 512) -> list[list[Score]]:
    """Scores for every continuation of every request, in order. Batches hold about `max_tokens` padded tokens;
    continuation logits are computed `logit_rows` positions at a time ([rows, vocab] fp32 each)."""
    for i, r in enumerate(requests):
        if not r.context:
            raise ValueError(f"request {i}: the context is empty (lm-eval puts a prefix token there)")
        if not r.continuations or any(not c for c in r.continuations):
            raise ValueError(f"request {i}: every continuation needs at least one token")
    out: list[list[Score]] = [[] for _ in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
    for batch in _batches(order, requests, max_tokens, max_rows):
        for i, scores in zip(batch, _score_batch(model, [requests[i] for i in batch], logit_rows)):
            out[i] = scores
    return out


def _score_batch(model: torch.nn.Module, requests: list[Request], logit_rows: int) -> list[list[Score]]:
    device = next(model.parameters()).device
    B = len(requests)
    L = max(len(r.context) for r in requests)
    ids = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for row, r in enumerate(requests):
        ids[row, L - len(r.context):] = torch.tensor(r.context)
        mask[row, L - len(r.context):] = 1
    ids, mask = ids.to(device), mask.to(device)
    padded = bool((mask == 0).any())
    longest_cont = max(len(c) for r in requests for c in r.continuations)
    cache = KVCache.for_model(model, B, L + longest_cont)
    last = model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1).logits[:, -1]
    last = torch.log_softmax(last.float(), dim=-1)  # [B, V]: predicts each continuation's first token
    first_best = last.argmax(-1)

    # One row per continuation: the cached context of its request, then the continuation minus its last token.
    rows = [(b, c) for b, r in enumerate(requests) for c in r.continuations]
    logprob = [float(last[b, c[0]]) for b, c in rows]
    greedy = [int(first_best[b]) == c[0] for b, c in rows]
    T = longest_cont - 1
    if T > 0:
        owner = torch.tensor([b for b, _ in rows], device=device)
        cache.select_rows(owner)
        cont_ids = torch.zeros((len(rows), T), dtype=torch.long)
        for n, (_, c) in enumerate(rows):
            cont_ids[n, :len(c) - 1] = torch.tensor(c[:-1])
        # Right padding after a continuation is never seen by its real tokens (causal), so only the
        # contexts' left padding needs masking.
        cont_mask = torch.cat([mask[owner], torch.ones((len(rows), T), dtype=mask.dtype, device=device)], dim=1)
        # The decoder's hidden states, then the LM head on real continuation positions only: a full
        # [rows, T, vocab] logits tensor would take gigabytes at 152K vocabulary rows.
        hidden, _ = model.model(cont_ids.to(device), cont_mask if padded else None, None, cache)
        targets = [(n, t, c[t + 1]) for n, (_, c) in enumerate(rows) for t in range(len(c) - 1)]
        for start in range(0, len(targets), logit_rows):
            chunk = targets[start:start + logit_rows]
            n_idx = torch.tensor([n for n, _, _ in chunk], device=device)
            t_idx = torch.tensor([t for _, t, _ in chunk], device=device)
            tok = torch.tensor([tok for _, _, tok in chunk], device=device)
            lp = torch.log_softmax(model.lm_head(hidden[n_idx, t_idx]).float(), dim=-1)
            picked = lp.gather(1, tok[:, None])[:, 0].tolist()
            best = (lp.argmax(-1) == tok).tolist()
            for (n, _, _), p, g in zip(chunk, picked, best):
                logprob[n] += p
                greedy[n] = greedy[n] and g
    scores: list[list[Score]] = [[] for _ in requests]
    for n, (b, _) in enumerate(rows):
        scores[b].append(Score(logprob[n], greedy[n]))
    return scores
