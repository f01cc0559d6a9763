"""Heuristic filters: length, symbol and digit ratios, long unbroken tokens, repeated lines and n-grams, and
boilerplate lines, with thresholds from the data recipe (per shard domain: code and math have their own shape).

Templated machine text is caught by repetition after masking digits: a listing generated from one template
repeats the same word n-grams on every line with only the numbers changed. Chinese has no spaces, so every CJK
character counts as a word.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")  # one CJK character, or a run of letters/digits
DIGITS = re.compile(r"\d")
BOILERPLATE = re.compile(
    r"cookie|copyright|©|all rights reserved|privacy policy|terms of (use|service)|sign in|log ?in\b|register\b|"
    r"subscribe|newsletter|follow us|share this|back to top|powered by|click here|skip to|your cart|sitemap|"
    r"版权所有|关于我们|联系我们|首页", re.IGNORECASE)


@dataclass
class Thresholds:
    """A document is dropped when any measure is past its limit (reason = the measure's name)."""

    min_chars: int = 200
    max_chars: int = 1_000_000
    min_words: int = 30
    max_symbol_ratio: float = 0.5  # characters that are neither letters, digits nor whitespace
    max_digit_word_ratio: float = 0.5  # words containing a digit (hex dumps, logs, tables of numbers)
    max_long_word_ratio: float = 0.2  # characters in words of 40+ characters (base64, minified blobs)
    max_dup_line_ratio: float = 0.3  # non-blank lines that repeat an earlier line
    max_dup_ngram_ratio: float = 0.8  # characters covered by repeated word 5-grams, digits masked (templates)
    max_boilerplate_line_ratio: float = 0.4  # lines that look like navigation, cookie banners or footers

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (f.name.endswith("ratio") and value > 1):
                raise ValueError(f"heuristics.{f.name} must be {'in [0, 1]' if f.name.endswith('ratio') else '>= 0'}, "
                                 f"got {value}")


@dataclass
class HeuristicsConfig:
    default: Thresholds = field(default_factory=Thresholds)
    domains: dict[str, dict] = field(default_factory=dict)  # domain -> {threshold name: value} overrides

    def for_domain(self, domain: str) -> Thresholds:
        return replace(self.default, **self.domains.get(domain, {}))

    def check(self) -> None:
        self.default.check()
        names = {f.name for f in fields(Thresholds)}
        for domain, overrides in self.domains.items():
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise ValueError(f"heuristics.domains.{domain}: unknown thresholds {unknown}; known: {sorted(names)}")
            self.for_domain(domain).check()


SYMBOL = re.compile(r"[^\w\s]|_")


def measures(text: str) -> dict[str, float]:
    """The measures the thresholds apply to."""
    symbols = len(SYMBOL.findall(text))
    non_space = len(text) - sum(text.count(c) for c in " \n\t\r")
    words = WORD.findall(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    dup_lines = len(lines) - len(set(lines))
    masked = [DIGITS.sub("0", w.lower()) for w in words]
    grams = Counter(zip(masked, masked[1:], masked[2:], masked[3:], masked[4:]))
    covered = bytearray(len(masked))
    for i, g in enumerate(zip(masked, masked[1:], masked[2:], masked[3:], masked[4:])):
        if grams[g] > 1:
            covered[i:i + 5] = b"\x01\x01\x01\x01\x01"
    word_chars = sum(map(len, masked)) or 1
    return {
        "chars": len(text),
        "words": len(words),
        "symbol_ratio": symbols / max(non_space, 1),
        "digit_word_ratio": sum("0" in w for w in masked) / max(len(words), 1),  # digits are masked to 0
        "long_word_ratio": sum(len(w) for w in words if len(w) >= 40) / word_chars,
        "dup_line_ratio": dup_lines / max(len(lines), 1),
        "dup_ngram_ratio": sum(len(w) for w, c in zip(masked, covered) if c) / word_chars,
        "boilerplate_line_ratio": sum(1 for ln in lines if len(ln) < 200 and BOILERPLATE.search(ln)) / max(len(lines), 1),
    }


def failed_check(m: dict[str, float], t: Thresholds) -> str | None:
    """The first threshold `m` fails, as the drop reason; None when the document passes."""
    if m["chars"] < t.min_chars:
        return "too_short"
    if m["chars"] > t.max_chars:
        return "too_long"
    if m["words"] < t.min_words:
        return "too_few_words"
    for name, value in asdict(t).items():
        if name.startswith("max_") and name.endswith("ratio") and m[name[4:]] > value:
            return name[4:]
    return None


class HeuristicFilter(BaseFilter):
    """Drops documents past the thresholds of their shard domain; the reason is the failed measure."""

    name = "qwen25 heuristics"

    def __init__(self, config: HeuristicsConfig, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        config.check()
        self.config = config

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = failed_check(measures(doc.text), self.config.for_domain(doc.metadata.get("domain", "")))
        return True if reason is None else (False, reason)
