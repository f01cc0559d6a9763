"""Picklable pieces for data pipeline tests (datatrove ships pipeline steps to worker processes): a word-level
tokenizer, an n-gram contamination rule, a rule-based stand-in for the teacher's labels, and a step that stops
a run mid-stage so a test can kill it."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from qwen25.data.pipeline.planted import BENCHMARK_ITEMS
from qwen25.data.pipeline.records import content_hash
from qwen25.data.pipeline.teacher import DIMENSIONS, TOPICS


def word_ids(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) for w in text.split()]


def benchmark_sequences() -> list[list[int]]:
    return [word_ids(item) for item in BENCHMARK_ITEMS]


def shares_8gram(train_ids, test_ids) -> bool:
    grams = {tuple(test_ids[i:i + 8]) for i in range(len(test_ids) - 7)}
    return any(tuple(train_ids[i:i + 8]) in grams for i in range(len(train_ids) - 7))


REVIEW_WORDS = ("酒店", "价格", "质量", "不错", "服务", "order now")


def rule_label(text: str) -> dict:
    """What a teacher might say: code is software, reviews and listings are shopping of low quality, other
    Chinese text is news, the rest is other."""
    shopping = any(w in text.lower() for w in REVIEW_WORDS)
    topic = "software" if ("def " in text or "import " in text) else "shopping" if shopping else "news" if any(
        "\u4e00" <= c <= "\u9fff" for c in text[:200]) else "other"
    quality = 2.0 if topic == "shopping" else 4.0
    return {"sha256": content_hash(text), "source": "", "seconds": 2.0,
            "scores": {d: quality for d in DIMENSIONS}, "topic_probs": {t: 0.93 if t == topic else 0.01 for t in TOPICS}}


class StallOnce:
    """Contamination rule that stalls the first run (until the test kills it) at a document containing word id
    `word`; it leaves `flag` behind, so the resumed run goes through."""

    def __init__(self, flag: str, word: int) -> None:
        self.flag, self.word = flag, word

    def __call__(self, train_ids, test_ids) -> bool:
        if self.word in train_ids and not Path(self.flag).exists():
            Path(self.flag).write_text(str(os.getpid()))
            time.sleep(600)
        return shares_8gram(train_ids, test_ids)
