"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules stages use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D weights (linear layers, embeddings); never norms or biases."""
    decay, no_decay = [], []
    for p in model.parameters():  # each tied parameter once: parameters() skips repeats
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


@dataclass
class Schedule:
    """Warmup then cosine or warmup-stable-decay (WSD), from `peak` down to `peak * min_ratio`."""

    kind: str  # "cosine" | "wsd" | "constant"
    peak: float
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.1
    decay_fraction: float = 0.2  # WSD: share of steps spent decaying at the end

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "wsd", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'wsd' or 'constant', got {self.kind!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        floor = self.peak * self.min_ratio
        if self.kind == "constant":
            return self.peak
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return floor + (self.peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_steps = max(int(self.total_steps * self.decay_fraction), 1)
        decay_start = self.total_steps - decay_steps
        if step < decay_start:
            return self.peak
        progress = min((step - decay_start) / decay_steps, 1.0)
        return self.peak + (floor - self.peak) * progress


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
