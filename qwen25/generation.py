"""Autoregressive generation with a KV cache: greedy and sampling, several stop ids, left-padded batches,
and a streaming iterator.

Logits processing follows transformers' order (repetition penalty, temperature, top-k, top-p) so the same
settings mean the same thing here and there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import torch

from qwen25.model.kv_cache import KVCache


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def from_generation_config(cls, gen: dict, **overrides) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json (eos ids become stop ids), then overrides."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in gen.items() if k in names and v is not None}
        eos = gen.get("eos_token_id")
        if eos is not None:
            values["stop_token_ids"] = list(eos) if isinstance(eos, list) else [eos]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def process_logits(scores: torch.Tensor, seen: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """scores [B, V] fp32; seen [B, V] bool marks tokens already in each sequence."""
    if p.repetition_penalty != 1.0:
        penalised = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
        scores = torch.where(seen, penalised, scores)
    if not p.do_sample:
        return scores
    if p.temperature != 1.0:
        scores = scores / p.temperature
    if p.top_k > 0 and p.top_k < scores.shape[-1]:
        kth = torch.topk(scores, p.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1)  # ascending
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= (1 - p.top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _choose(scores: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    if not p.do_sample:
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ids [B, L] and attention mask [B, L], padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    return ids, mask


@torch.inference_mode()
def decode_steps(model: torch.nn.Module, prompts: Sequence[Sequence[int]], p: SamplingParams,
                 pad_id: int = 0) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, step by step; finished rows yield `pad_id`."""
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    B, L = ids.shape
    padded = bool((mask == 0).any())
    vocab = model.config.vocab_size
    seen = torch.zeros((B, vocab), dtype=torch.bool, device=device)
    if p.repetition_penalty != 1.0:
        seen.scatter_(1, ids.clamp(max=vocab - 1), mask.bool())
    stop = torch.tensor(p.stop_token_ids or [-1], device=device)
    gen = torch.Generator(device=device).manual_seed(p.seed) if p.seed is not None else None
    cache = KVCache.for_model(model, B, L + p.max_new_tokens)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    logits = model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1).logits[:, -1]
    for step in range(p.max_new_tokens):
        nxt = _choose(process_logits(logits.float(), seen, p), p, gen)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        yield nxt
        finished |= torch.isin(nxt, stop)
        if step + 1 == p.max_new_tokens or bool(finished.all()):
            return
        seen[torch.arange(B, device=device), nxt] = True
        if padded:
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        logits = model(nxt[:, None], attention_mask=mask if padded else None, cache=cache).logits[:, -1]


def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
             pad_id: int = 0) -> list[list[int]]:
    """New tokens for each prompt (a stop token, when hit, is included and ends that row)."""
    p = params or SamplingParams()
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for nxt in decode_steps(model, prompts, p, pad_id):
        for row, token in enumerate(nxt.tolist()):
            if not done[row]:
                out[row].append(token)
                done[row] = token in p.stop_token_ids
    return out


def stream(model: torch.nn.Module, prompt: Sequence[int], params: SamplingParams | None = None) -> Iterator[int]:
    """Yield new tokens of one prompt as they are produced."""
    for nxt in decode_steps(model, [prompt], params or SamplingParams()):
        yield int(nxt[0])
