"""GRPO's rewards: rule rewards from the verifiers (1 when a response passes its query's verifier, else 0) and
reward-model scores, mixed with weights. A reward function maps (the query of each sample, the sample's text) to
one number per sample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from qwen25.data.curation import verify_response
from qwen25.data.queries import Query
from qwen25.posttraining.rm import load_reward_model
from qwen25.tokenizer import QwenTokenizer

RewardFn = Callable[[Sequence[Query], Sequence[str]], list[float]]


class VerifierReward:
    """1.0 for a response its query's verifier passes, 0.0 otherwise (threads: some verifiers run subprocesses)."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers

    def __call__(self, queries: Sequence[Query], texts: Sequence[str]) -> list[float]:
        with ThreadPoolExecutor(self.workers) as pool:
            return [float(v.passed) for v in pool.map(verify_response, queries, texts)]


class RewardModelScore:
    """The reward model's score of (query messages + response), read at the closing <|im_end|>."""

    def __init__(self, directory: str | Path, tok: QwenTokenizer, device: torch.device, batch: int = 32) -> None:
        self.model = load_reward_model(directory, device=device)
        self.model.requires_grad_(False)
        self.tok, self.batch = tok, batch

    @torch.inference_mode()
    def __call__(self, queries: Sequence[Query], texts: Sequence[str]) -> list[float]:
        rows = [self.tok.encode_chat(q.messages + [{"role": "assistant", "content": t}])[0] for q, t in zip(queries, texts)]
        im_end = self.tok.control_ids["<|im_end|>"]
        rows = [r[:max(i for i, x in enumerate(r) if x == im_end) + 1] for r in rows]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(rows), self.batch):
            chunk = rows[start:start + self.batch]
            ids = torch.full((len(chunk), max(map(len, chunk))), self.tok.pad_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
            last = torch.tensor([len(r) - 1 for r in chunk])
            scores += self.model(ids.to(device), last=last.to(device)).tolist()
        return scores


class MixedReward:
    """sum of weight x reward over the sources with a non-zero weight."""

    def __init__(self, sources: Sequence[tuple[float, RewardFn]]) -> None:
        self.sources = [(w, fn) for w, fn in sources if w]
        if not self.sources:
            raise ValueError("rewards: every weight is zero; give the verifier or the reward model a weight")

    def __call__(self, queries: Sequence[Query], texts: Sequence[str]) -> list[float]:
        total = [0.0] * len(texts)
        for weight, fn in self.sources:
            total = [t + weight * r for t, r in zip(total, fn(queries, texts))]
        return total
