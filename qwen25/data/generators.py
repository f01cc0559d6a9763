"""The generator interface the post-training data pipeline samples from, and its implementation on the
inference engine.

A generator is any callable `(prompts, k, seeds) -> completions` with a `name` for provenance: `prompts` is a
list of chat message lists, `seeds` one seed per prompt, and the result holds k completion strings per prompt.
The same prompt and seed give the same completions whatever else is in the call, so a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams
from qwen25.loading import load_model
from qwen25.tokenizer import QwenTokenizer, load_tokenizer


class Generator(Protocol):
    name: str

    def __call__(self, prompts: Sequence[list[dict]], k: int, seeds: Sequence[int]) -> list[list[str]]: ...


@dataclass
class ModelGenerator:
    """Samples on the inference engine: each prompt is one request with n = k (the k samples share one
    prefill, sample j draws from seed + j), and all prompts of a call decode in one continuous batch."""

    model: torch.nn.Module
    tokenizer: QwenTokenizer
    params: SamplingParams
    name: str
    max_batch: int = 16
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer: str | Path | None = None, dtype: str | None = None,
             max_batch: int = 16, **sampling) -> ModelGenerator:
        """A model directory (with tokenizer.json, or pass `tokenizer`), sampling defaults from its
        generation_config.json, then `sampling` overrides (None values ignored)."""
        if tokenizer is None and not (Path(model_dir) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json; pass a tokenizer directory or 'qwen2.5'")
        model = load_model(str(model_dir), dtype=dtype).eval()
        tok = load_tokenizer(tokenizer or model_dir)
        params = SamplingParams.from_generation_config(model.generation_config, do_sample=True, **sampling)
        stop = set(params.stop_token_ids) | set(model.config.eos_token_ids) | {tok.eos_id}
        params = replace(params, stop_token_ids=sorted(stop))
        return cls(model, tok, params, name=f"{Path(model_dir).resolve()} ({sampling_summary(params)})",
                   max_batch=max_batch)

    def engine(self, k: int = 1) -> Engine:
        """One engine for the generator's life (its decode kernels are measured once)."""
        if self._engine is None or self._engine.max_batch < k:
            self._engine = Engine(self.model, self.tokenizer, max_batch=max(self.max_batch, k))
        return self._engine

    def mean_logprob(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> list[float]:
        """Mean log p per token of each response as the assistant's reply to its chat prompt (the reply's
        end-of-turn token included): how naturally the model would have written it."""
        if len(prompts) != len(responses):
            raise ValueError(f"one response per prompt: {len(prompts)} prompts, {len(responses)} responses")
        out = []
        for messages, response in zip(prompts, responses):
            context = self.tokenizer.encode_chat(messages, add_generation_prompt=True)[0]
            continuation = self.tokenizer.encode(response) + [self.tokenizer.eos_id]
            score = self.engine().score(context, [continuation])[0]
            out.append(score.total / len(score.logprobs))
        return out

    def __call__(self, prompts: Sequence[list[dict]], k: int, seeds: Sequence[int]) -> list[list[str]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        ids = [self.tokenizer.encode_chat(messages, add_generation_prompt=True)[0] for messages in prompts]
        outputs = self.engine(k).generate(ids, [replace(self.params, n=k, seed=s) for s in seeds])
        return [[c.text for c in out.completions] for out in outputs]


def sampling_summary(p: SamplingParams) -> str:
    return (f"temperature {p.temperature:g}, top_p {p.top_p:g}, top_k {p.top_k}, repetition_penalty "
            f"{p.repetition_penalty:g}, max_new_tokens {p.max_new_tokens}")
