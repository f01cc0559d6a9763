"""Generation in one call: `generate` (token lists for a batch of prompts) and `stream` (tokens of one prompt as
they come), both thin uses of the inference engine (`qwen25.inference.engine.Engine`), which has the rest:
per-request sampling, log-probs, text, stop strings, n samples, continuous batching and scoring.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams

__all__ = ["SamplingParams", "generate", "stream"]


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
             max_batch: int = 32) -> list[list[int]]:
    """New tokens for each prompt (a stop token, when hit, is included and ends that row). With `params.n` > 1
    the n samples of each prompt follow each other."""
    n = (params or SamplingParams()).n
    engine = Engine(model, max_batch=max(max_batch, n), prefill_chunk=None)  # whole prompts, as one call expects
    outputs = engine.generate(prompts, params)
    return [c.token_ids for out in outputs for c in out.completions]


def stream(model: torch.nn.Module, prompt: Sequence[int], params: SamplingParams | None = None) -> Iterator[int]:
    """Yield new tokens of one prompt as they are produced."""
    if params is not None and params.n != 1:
        raise ValueError("stream yields one sample's tokens; use Engine.stream for n > 1")
    for delta in Engine(model, max_batch=1, prefill_chunk=None).stream(prompt, params):
        yield from delta.token_ids
