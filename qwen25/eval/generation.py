"""The harness's generation interface, and its adapter over `qwen25.generation`.

Generative tasks call a `GenerateFn`: token-id prompts, a token budget, stop strings -> the text of each
completion, cut before the first stop string (lm-eval's `generate_until` contract). THE INFERENCE ENGINE
PLUGS IN HERE: any function with this signature (continuous batching, per-request sampling) replaces
`model_generate_fn`, which runs the plain batched decoder: prompts sorted by length, batches of `batch_size`,
each batch decoded until every row has produced a stop token or a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from qwen25.generation import SamplingParams, decode_steps

GenerateFn = Callable[..., list[str]]  # (prompts, max_new_tokens, stop_strings, temperature=0.0, seed=None)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def model_generate_fn(model: torch.nn.Module, tokenizer, stop_ids: Sequence[int], batch_size: int = 8,
                      log: Callable[[str], None] | None = None) -> GenerateFn:
    """A GenerateFn over `qwen25.generation.decode_steps` (greedy at temperature 0, else sampling)."""

    def generate(prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 temperature: float = 0.0, seed: int | None = None) -> list[str]:
        params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                temperature=temperature if temperature > 0 else 1.0, stop_token_ids=list(stop_ids),
                                seed=seed)
        outputs = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            for i, text in zip(rows, _decode_batch(model, tokenizer, [prompts[i] for i in rows], params,
                                                   stop_strings)):
                outputs[i] = text
            if log:
                log(f"generated {min(start + batch_size, len(order))}/{len(order)}")
        return outputs

    return generate


def _decode_batch(model: torch.nn.Module, tokenizer, prompts: list[Sequence[int]], params: SamplingParams,
                  stop_strings: Sequence[str]) -> list[str]:
    stop_ids = set(params.stop_token_ids)
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    longest_stop = max((len(s) for s in stop_strings), default=0)
    for step in decode_steps(model, prompts, params, pad_id=0):
        for row, token in enumerate(step.tolist()):
            if done[row]:
                continue
            if token in stop_ids:
                done[row] = True
                continue
            tokens[row].append(token)
            if stop_strings:
                # a stop string ends within the last few characters: decode only a tail long enough to hold it
                tail = tokenizer.decode(tokens[row][-(longest_stop + 8):])
                done[row] = cut_at_stop(tail, stop_strings)[1]
        if all(done):
            break
    return [cut_at_stop(tokenizer.decode(t), stop_strings)[0] for t in tokens]
