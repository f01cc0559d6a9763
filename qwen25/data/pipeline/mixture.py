"""Topic rebalancing (report §3.1): down-sample over-represented topics and up-sample high-value ones towards a
target mixture of training bytes.

`TopicCounter` counts training bytes per topic in every task; `Rebalance` (a later stage) turns all tasks'
counts and the target into a sampling rate per topic and keeps each training document `floor(rate)` times plus
once more with probability `rate - floor(rate)`, decided by its content hash (deterministic, and the same in
every executor). A target share is of all the input's training bytes; topics the target does not name keep rate
1, so the total moves by what the named topics gain or lose. Held-out documents pass through untouched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from qwen25.data.pipeline.records import content_hash
from qwen25.data.pipeline.teacher import TOPICS
from qwen25.io import atomic_write_text


@dataclass
class MixtureConfig:
    target: dict[str, float] = field(default_factory=dict)  # topic -> share of training bytes; empty: no rebalancing
    max_upsample: float = 3.0

    def check(self) -> None:
        unknown = sorted(set(self.target) - set(TOPICS))
        if unknown:
            raise ValueError(f"mixture.target: unknown topics {unknown}; known: {list(TOPICS)}")
        if any(not (v >= 0 and math.isfinite(v)) for v in self.target.values()):
            raise ValueError(f"mixture.target: shares must be >= 0, got {self.target}")
        if sum(self.target.values()) > 1:
            raise ValueError(f"mixture.target: shares of the training bytes must sum to at most 1, got "
                             f"{sum(self.target.values()):g}")
        if self.max_upsample < 1:
            raise ValueError(f"mixture.max_upsample must be >= 1, got {self.max_upsample}")


def sampling_rates(bytes_by_topic: dict[str, int], cfg: MixtureConfig) -> dict[str, float]:
    """Per-topic rates that bring each named topic to its target share of the input's training bytes (capped
    at `max_upsample`); other topics keep theirs."""
    total = sum(bytes_by_topic.values())
    return {t: min(cfg.max_upsample, cfg.target[t] * total / n) if t in cfg.target and n > 0 else 1.0
            for t, n in bytes_by_topic.items()}


def copies(rate: float, text: str) -> int:
    """floor(rate), plus one with probability frac(rate), from the content hash: the same text always gets the
    same number of copies."""
    u = int(content_hash(text)[8:16], 16) / 16 ** 8
    return int(rate) + (u < rate - int(rate))


def is_train(doc) -> bool:
    return doc.metadata.get("split", "train") == "train"


class TopicCounter(PipelineStep):
    """Pass-through; writes this task's training bytes and documents per topic to `counts/<rank>.json`."""

    name = "qwen25 topic counter"
    type = "📊 - STATS"

    def __init__(self, output_folder: str) -> None:
        super().__init__()
        self.output_folder = output_folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: dict[str, dict[str, int]] = {}
        for doc in data:
            if is_train(doc):
                c = counts.setdefault(doc.metadata["topic"], {"docs": 0, "bytes": 0})
                c["docs"] += 1
                c["bytes"] += len(doc.text.encode("utf-8"))
            yield doc
        folder = get_datafolder(self.output_folder)
        atomic_write_text(folder.resolve_paths(f"{rank:05d}.json"), json.dumps(counts, sort_keys=True) + "\n")


def merge_counts(folder: str) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    data = get_datafolder(folder)
    for name in sorted(data.list_files(glob_pattern="*.json")):
        with data.open(name) as f:
            for topic, c in json.load(f).items():
                t = total.setdefault(topic, {"docs": 0, "bytes": 0})
                t["docs"] += c["docs"]
                t["bytes"] += c["bytes"]
    return total


class Rebalance(PipelineStep):
    """Repeats or drops training documents by their topic's rate; copies get ids `<id>#<k>`. Every task computes
    the rates from all tasks' topic counts (the same numbers everywhere); task 0 records them in `rates_path`."""

    name = "qwen25 rebalance"
    type = "⚖️ - SAMPLER"

    def __init__(self, counts_folder: str, rates_path: str, cfg: MixtureConfig) -> None:
        super().__init__()
        self.counts_folder, self.rates_path, self.cfg = counts_folder, rates_path, cfg

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts = merge_counts(self.counts_folder)
        rates = sampling_rates({t: c["bytes"] for t, c in counts.items()}, self.cfg)
        if rank == 0:
            atomic_write_text(self.rates_path, json.dumps({"target": self.cfg.target, "rates": rates,
                                                           "max_upsample": self.cfg.max_upsample}, indent=2) + "\n")
        for doc in data:
            if not is_train(doc):
                yield doc
                continue
            n = copies(rates.get(doc.metadata["topic"], 1.0), doc.text)
            self.stat_update("dropped" if n == 0 else "kept")
            for k in range(n):
                if k == 0:
                    yield doc
                else:
                    self.stat_update("copies")
                    yield type(doc)(text=doc.text, id=f"{doc.id}#{k}", metadata=dict(doc.metadata))
