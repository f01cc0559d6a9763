"""Exact and near-duplicate removal with datatrove's multi-stage deduplication (signatures per task, a finder or
bucket/cluster stage over all tasks, then a filter per task), configured for this corpus.

- Exact: a 64-bit hash of the NFC text with whitespace runs collapsed.
- Near (MinHash LSH): word 5-grams of datatrove's simplified text (lower case, no punctuation), where a word is a
  run of letters or digits or one CJK character (Chinese has no spaces), and digits are kept: with datatrove's
  default number masking every arithmetic drill would look like every other one. The default 14 bands of 8 hashes
  find a pair with Jaccard similarity 0.8 with probability 0.92 (0.7: 0.56, 0.5: 0.05); recipes/data-tiny.toml
  uses 16 bands of 6 (0.8: 0.99, 0.7: 0.87, 0.5: 0.22), measured in docs/data.md.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")
WHITESPACE = re.compile(r"\s+")


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    ngrams: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def check(self) -> None:
        for name in ("ngrams", "buckets", "hashes_per_bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"dedup.{name} must be >= 1, got {getattr(self, name)}")

    def threshold(self) -> float:
        """The similarity at which a pair is found with probability one half (the LSH S-curve's midpoint)."""
        return (1 - 0.5 ** (1 / self.buckets)) ** (1 / self.hashes_per_bucket)


class WordSplitter(WordTokenizer):
    """Words for shingling: runs of letters/digits, and each CJK character on its own."""

    def __init__(self) -> None:
        super().__init__("multilingual")

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, pos = [], 0
        for line in text.splitlines(keepends=True):
            if line.strip():
                spans.append((pos, pos + len(line.rstrip("\r\n"))))
            pos += len(line)
        return spans


def exact_key(doc: Document) -> str:
    """What two documents must share to be exact duplicates (datatrove reads the return annotation: str)."""
    return WHITESPACE.sub(" ", unicodedata.normalize("NFC", doc.text)).strip()


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=exact_key, hash_config=HashConfig(precision=64, hash_fc="xxhash"))


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(n_grams=cfg.ngrams, num_buckets=cfg.buckets, hashes_per_bucket=cfg.hashes_per_bucket,
                         seed=cfg.seed, norm_config=TextNormConfig(norm_numbers=False),
                         hash_config=HashConfig(precision=64, hash_fc="xxhash"))
