"""Where GRPO's samples come from: a rollout engine takes prompts, a group size G, sampling settings and a seed, and
returns G completions per prompt (token ids, group after group), optionally with the sampler's log-probs.

`EngineRollouts` runs on the inference engine (`qwen25.inference.Engine`): each prompt is one request with
n = G samples, so a group costs one prefill of its prompt, and every token comes with the policy's log-prob
(log-softmax of the raw logits, temperature 1), which GRPO uses as pi_old instead of a second forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams


@dataclass
class RolloutResult:
    completions: list[list[int]]  # len(prompts) x G, group after group; a stop token, when hit, ends the row
    logprobs: list[list[float]] | None = None  # the sampler's log-prob of each completion token, when it has them


class Rollouts(Protocol):
    def __call__(self, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
                 seed: int) -> RolloutResult: ...


class EngineRollouts:
    """Rollouts through one `Engine` over the policy (kept for the run: the policy's weights change in place
    between calls). Prompt i's request samples with seeds `seed + i * G` ... `seed + i * G + G - 1`, so a call is
    reproducible and no two samples share a random stream. `max_rows`: most sequences decoded together; groups
    join the batch as rows free up (continuous batching). The model is put in eval mode for the rollout and
    restored afterwards."""

    def __init__(self, model: torch.nn.Module, max_rows: int = 256, kernels: str | None = None) -> None:
        self.model = model
        self.engine = Engine(model, max_batch=max_rows, prefill_chunk=None, kernels=kernels)

    def __call__(self, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
                 seed: int) -> RolloutResult:
        if group_size > self.engine.max_batch:
            raise ValueError(f"group size {group_size} is more than the engine's {self.engine.max_batch} rows "
                             "(rollout.max_rows)")
        requests = [replace(params, n=group_size, seed=seed + i * group_size) for i in range(len(prompts))]
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = self.engine.generate([list(p) for p in prompts], requests)
        finally:
            self.model.train(was_training)
        samples = [c for out in outputs for c in out.completions]
        return RolloutResult([c.token_ids for c in samples], [c.logprobs for c in samples])
