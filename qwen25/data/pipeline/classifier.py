"""The cheap student: a linear model over hashed text features, distilled from the instruct model's labels, that
scores every document (quality dimensions) and labels its topic.

Features of a document's first `max_chars` characters (the part the teacher read): lower-cased words (a CJK
character is a word) and word bigrams, plus coarse shape tokens (symbol, digit and CJK shares, line length),
hashed with crc32 into `n_features` buckets, log(1 + count) weighted and L2-normalised. The model is a sparse
linear layer (`embedding_bag` over the buckets) with a bias: regression heads for the dimensions (targets standardised),
a softmax head for the topic trained on the teacher's topic probabilities.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qwen25.data.pipeline.teacher import DIMENSIONS, TOPICS
from qwen25.io import atomic_path, atomic_write_text

WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\d_]+|\d+|[^\w\s]")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
SYMBOL = re.compile(r"[^\w\s]|_")
DIGIT = re.compile(r"\d")


@dataclass
class FeatureConfig:
    n_features: int = 1 << 18
    max_chars: int = 1500


def _bucket(name: str, value: float, edges: Sequence[float]) -> str:
    return f"\x00{name}:{sum(value > e for e in edges)}"


def features(text: str, cfg: FeatureConfig) -> tuple[list[int], list[float]]:
    """(bucket indices, weights) of one document."""
    text = text[:cfg.max_chars]
    words = [w.lower() for w in WORD.findall(text)]
    words = ["0" if w.isdigit() else w for w in words]
    tokens = Counter(words)
    tokens.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    lines = [ln for ln in text.splitlines() if ln.strip()] or [""]
    n = max(len(text), 1)
    tokens[_bucket("symbols", len(SYMBOL.findall(text)) / n, (0.05, 0.1, 0.2, 0.3))] += 1
    tokens[_bucket("digits", len(DIGIT.findall(text)) / n, (0.02, 0.05, 0.1, 0.2))] += 1
    tokens[_bucket("cjk", len(CJK.findall(text)) / n, (0.1, 0.5))] += 1
    tokens[_bucket("line", sum(map(len, lines)) / len(lines), (20, 40, 80, 160))] += 1
    merged: dict[int, float] = {}
    for token, count in tokens.items():
        idx = zlib.crc32(token.encode("utf-8")) % cfg.n_features
        merged[idx] = merged.get(idx, 0.0) + math.log1p(count)
    norm = math.sqrt(sum(v * v for v in merged.values())) or 1.0
    return list(merged), [v / norm for v in merged.values()]


def _bags(texts: Sequence[str], cfg: FeatureConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    indices, weights, offsets = [], [], []
    for text in texts:
        offsets.append(len(indices))
        idx, w = features(text, cfg)
        indices += idx
        weights += w
    return (torch.tensor(indices, dtype=torch.long), torch.tensor(offsets, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32))


@dataclass
class StudentPrediction:
    scores: dict[str, float]
    topic_probs: dict[str, float]

    @property
    def topic(self) -> str:
        return max(self.topic_probs, key=self.topic_probs.get)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block on `n` intra-op threads, then restore the caller's setting (small sparse ops on a shared CPU
    are several times faster on one thread than fighting over two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Student:
    """Hashed-feature linear model: `predict(texts)` gives teacher-scale scores and topic probabilities.

    Only the buckets seen in training have weights (`buckets` [U] with rows of `weight` [U, D + K]); the rest
    score zero."""

    def __init__(self, cfg: FeatureConfig, buckets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        self.cfg, self.buckets, self.weight = cfg, buckets, weight
        self.bias, self.mean, self.std = bias, mean, std
        self.row = torch.full((cfg.n_features,), len(buckets), dtype=torch.long)  # bucket -> row; unseen -> zeros
        self.row[buckets] = torch.arange(len(buckets))
        self.table = torch.cat([weight, torch.zeros(1, weight.shape[1])])

    @torch.no_grad()
    def raw(self, texts: Sequence[str]) -> torch.Tensor:
        indices, offsets, weights = _bags(texts, self.cfg)
        with torch_threads(1):
            return F.embedding_bag(self.row[indices], self.table, offsets, mode="sum",
                                   per_sample_weights=weights) + self.bias

    def predict(self, texts: Sequence[str]) -> list[StudentPrediction]:
        if not texts:
            return []
        out = self.raw(texts)
        d = len(DIMENSIONS)
        scores = (out[:, :d] * self.std + self.mean).clamp(1, 5)
        topics = torch.softmax(out[:, d:], dim=-1)
        return [StudentPrediction(dict(zip(DIMENSIONS, s.tolist())), dict(zip(TOPICS, t.tolist())))
                for s, t in zip(scores, topics)]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, buckets=self.buckets.numpy(), weight=self.weight.numpy(), bias=self.bias.numpy(),
                     mean=self.mean.numpy(), std=self.std.numpy())
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(
            {"features": asdict(self.cfg), "dimensions": list(DIMENSIONS), "topics": list(TOPICS)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Student:
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"{path}: no distilled classifier here (and {meta_path.name} beside it)")
        meta = json.loads(meta_path.read_text())
        if meta.get("dimensions") != list(DIMENSIONS) or meta.get("topics") != list(TOPICS):
            raise ValueError(f"{meta_path}: classifier made for dimensions {meta.get('dimensions')} and topics "
                             f"{meta.get('topics')}, this code rates {list(DIMENSIONS)} / {list(TOPICS)}")
        a = np.load(path)
        return cls(FeatureConfig(**meta["features"]), *(torch.from_numpy(a[k]) for k in
                                                         ("buckets", "weight", "bias", "mean", "std")))


def label_targets(labels: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher labels -> (dimension scores [N, D], topic probabilities [N, K])."""
    scores = torch.tensor([[lab["scores"][d] for d in DIMENSIONS] for lab in labels], dtype=torch.float32)
    topics = torch.tensor([[lab["topic_probs"][t] for t in TOPICS] for lab in labels], dtype=torch.float32)
    return scores, topics / topics.sum(-1, keepdim=True)


def fit_student(texts: Sequence[str], labels: Sequence[dict], cfg: FeatureConfig | None = None, epochs: int = 60,
                lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> Student:
    """Full-batch Adam on the labelled documents: MSE on standardised scores + cross-entropy to the teacher's
    topic distribution, over the buckets the documents use."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"fit_student: need as many labels as texts (> 0), got {len(texts)} and {len(labels)}")
    cfg = cfg or FeatureConfig()
    scores, topics = label_targets(labels)
    mean, std = scores.mean(0), scores.std(0, unbiased=False).clamp(min=1e-3)
    target = (scores - mean) / std
    indices, offsets, weights = _bags(texts, cfg)
    buckets, rows = torch.unique(indices, return_inverse=True)
    d, k = len(DIMENSIONS), len(TOPICS)
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(len(buckets), d + k, generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros(d + k)
    bias[d:] = topics.mean(0).clamp(min=1e-4).log()
    bias.requires_grad_()
    opt = torch.optim.Adam([weight, bias], lr=lr)
    with torch_threads(1):
        for _ in range(epochs):
            out = F.embedding_bag(rows, weight, offsets, mode="sum", per_sample_weights=weights) + bias
            loss = F.mse_loss(out[:, :d], target) + F.cross_entropy(out[:, d:], topics)
            loss = loss + weight_decay * weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Student(cfg, buckets, weight.detach(), bias.detach(), mean, std)
