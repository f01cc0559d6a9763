"""Where GRPO's samples come from: a rollout engine takes prompts, a group size G, sampling settings and a seed, and
returns G completions per prompt (token ids, group after group), optionally with the sampler's log-probs.

`GenerateRollouts` runs on `qwen25.generation.generate`, repeating each prompt G times in one left-padded batch;
an engine that shares one prefill among the G samples (the inference engine) can take its place without GRPO
changing: it only needs to be a `Rollouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from qwen25.generation import SamplingParams, generate


@dataclass
class RolloutResult:
    completions: list[list[int]]  # len(prompts) x G, group after group; a stop token, when hit, ends the row
    logprobs: list[list[float]] | None = None  # the sampler's log-prob of each completion token, when it has them


class Rollouts(Protocol):
    def __call__(self, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
                 seed: int) -> RolloutResult: ...


class GenerateRollouts:
    """Rollouts with `generate`: each prompt repeated `group_size` times, at most `max_rows` rows per batch (each
    batch samples with its own seed, `seed + batch index`). The model is put in eval mode for the rollout and
    restored afterwards."""

    def __init__(self, model: torch.nn.Module, pad_id: int, max_rows: int = 256) -> None:
        self.model, self.pad_id, self.max_rows = model, pad_id, max_rows

    def __call__(self, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
                 seed: int) -> RolloutResult:
        rows = [list(p) for p in prompts for _ in range(group_size)]
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[list[int]] = []
            for i, start in enumerate(range(0, len(rows), self.max_rows)):
                out += generate(self.model, rows[start:start + self.max_rows], replace(params, seed=seed + i),
                                pad_id=self.pad_id)
        finally:
            self.model.train(was_training)
        return RolloutResult(out)
