"""Log-likelihoods of continuations given a context, through the inference engine's `score_many`.

The choices of a multiple-choice question share their context: `Engine.score_many` prefills it once and runs
the continuations on copies of its cached row, the LM head on continuation positions only, several questions
per forward. The result is what one plain forward over context + continuation gives (tested to float tolerance
in fp32): the sum of log p(continuation token) and whether every continuation token is the argmax, as lm-eval
defines them.
This module adds lm-eval's truncation rule and the checks on a request; there is no second scoring path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qwen25.inference.engine import ContinuationScore, Engine

LOG_EVERY = 64  # contexts scored between progress lines (and per `score_many` call)


@dataclass(frozen=True)
class Request:
    """One context (token ids, non-empty) and the continuations to score after it."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


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


def score_requests(engine: Engine, requests: Sequence[Request], max_tokens: int = 256,
                   log: Callable[[str], None] | None = None) -> list[list[ContinuationScore]]:
    """Scores for every continuation of every request, in order (`.total`, `.greedy`); `max_tokens`:
    continuation tokens per forward (each takes [tokens, vocab] fp32 logits)."""
    for i, r in enumerate(requests):
        if not r.context:
            raise ValueError(f"request {i}: the context is empty (lm-eval puts a prefix token there)")
        if not r.continuations or any(not c for c in r.continuations):
            raise ValueError(f"request {i}: every continuation needs at least one token")
    out: list[list[ContinuationScore]] = []
    for start in range(0, len(requests), LOG_EVERY):
        block = requests[start:start + LOG_EVERY]
        out += engine.score_many([(r.context, r.continuations) for r in block], max_tokens_per_forward=max_tokens)
        if log and len(requests) > LOG_EVERY:
            log(f"scored {len(out)}/{len(requests)} contexts")
    return out
