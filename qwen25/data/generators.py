"""The generator interface the post-training data pipeline samples from, and its adapter over the inference
engine (`ModelGenerator`: all prompts in one engine run, each prompt's k samples from one prefill).

A generator is any callable `(prompts, k, seed) -> completions` with a `name` for provenance: `prompts` is a
list of chat message lists, the result holds k completion strings per prompt, and the same arguments give the
same completions (prompt i samples from seed `seed + i`: its sample j draws from `(seed + i) * k + j`), so a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams
from qwen25.loading import load_model
from qwen25.tokenizer import QwenTokenizer, load_tokenizer


class Generator(Protocol):
    name: str

    def __call__(self, prompts: Sequence[list[dict]], k: int, seed: int) -> list[list[str]]: ...


@dataclass
class ModelGenerator:
    model: torch.nn.Module
    tokenizer: QwenTokenizer
    params: SamplingParams
    name: str

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer: str | Path | None = None, dtype: str | None = None,
             **sampling) -> ModelGenerator:
        """A model directory (with tokenizer.json, or pass `tokenizer`), sampling defaults from its
        generation_config.json, then `sampling` overrides (None values ignored)."""
        model = load_model(str(model_dir), dtype=dtype).eval()
        tok_source = tokenizer or model_dir
        if tokenizer is None and not (Path(model_dir) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json; pass a tokenizer directory or 'qwen2.5'")
        tok = load_tokenizer(tok_source)
        params = SamplingParams.from_generation_config(model.generation_config, do_sample=True, **sampling)
        stop = set(params.stop_token_ids) | set(model.config.eos_token_ids) | {tok.eos_id}
        params = replace(params, stop_token_ids=sorted(stop))
        return cls(model, tok, params, name=f"{Path(model_dir).resolve()} ({sampling_summary(params)})")

    def __call__(self, prompts: Sequence[list[dict]], k: int, seed: int) -> list[list[str]]:
        ids = [self.tokenizer.encode_chat(messages, add_generation_prompt=True)[0] for messages in prompts]
        engine = Engine(self.model, max_batch=max(64, k), prefill_chunk=None)
        outputs = engine.generate(ids, [replace(self.params, n=k, seed=(seed + i) * k) for i in range(len(ids))])
        stop = set(self.params.stop_token_ids)
        return [[self.tokenizer.decode([t for t in c.token_ids if t not in stop]) for c in out.completions]
                for out in outputs]


def sampling_summary(p: SamplingParams) -> str:
    return (f"temperature {p.temperature:g}, top_p {p.top_p:g}, top_k {p.top_k}, repetition_penalty "
            f"{p.repetition_penalty:g}, max_new_tokens {p.max_new_tokens}")
