"""Long responses by back-translation (report §4.1 item on long responses): a model writes the instruction that
a long document answers, and the pair (instruction, document) becomes an SFT record when the document's
length and quality pass and the instruction explains the document.

Quality score, per candidate instruction q for document d (both measured with the generator model):
  gain = mean log p(d | q) - mean log p(d | a neutral request)
the per-token log-likelihood the instruction adds (an instruction-following-difficulty style score: a query
that fits the document makes it more predictable). The document itself must also pass text checks (length,
repeated lines, repeated word 3-grams, share of letters), which drop boilerplate and broken text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwen25.data.curation import query_seed
from qwen25.data.generators import ModelGenerator
from qwen25.io import atomic_write_text, iter_jsonl_lines

PROMPT = ("Here is a text:\n\n<text>\n{document}\n</text>\n\nWrite the request or question that a user could "
          "have asked for which this whole text is the ideal answer. Reply with the request only, in the text's "
          "language, in one or two sentences.")
NEUTRAL = "Write a text."


@dataclass
class BacktranslationConfig:
    min_chars: int = 800
    max_chars: int = 6000
    min_gain: float = 0.0  # nats per token that the instruction must add
    max_query_chars: int = 400
    max_repeated_lines: float = 0.3
    max_repeated_trigrams: float = 0.3
    min_letter_share: float = 0.5


def document_problems(text: str, cfg: BacktranslationConfig) -> list[str]:
    """Why a document cannot be a long response (empty when it can)."""
    problems = []
    if not cfg.min_chars <= len(text) <= cfg.max_chars:
        problems.append(f"length {len(text)} outside [{cfg.min_chars}, {cfg.max_chars}]")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and 1 - len(set(lines)) / len(lines) > cfg.max_repeated_lines:
        problems.append("repeated lines")
    words = re.findall(r"\w+", text.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    if trigrams and 1 - len(set(trigrams)) / len(trigrams) > cfg.max_repeated_trigrams:
        problems.append("repeated word 3-grams")
    visible = [c for c in text if not c.isspace()]
    if visible and sum(c.isalpha() for c in visible) / len(visible) < cfg.min_letter_share:
        problems.append("too few letters")
    return problems


def query_problems(query: str, document: str, cfg: BacktranslationConfig) -> list[str]:
    """Why a written instruction is unusable (empty when usable)."""
    if not query.strip():
        return ["empty instruction"]
    problems = []
    if len(query) > cfg.max_query_chars:
        problems.append(f"instruction longer than {cfg.max_query_chars} characters")
    if query.strip() in document:
        problems.append("instruction copied from the document")
    return problems


def read_documents(path: str | Path) -> list[dict]:
    """A JSONL of {"text", optional "source"} (the pretraining corpus format)."""
    docs = []
    for line_no, obj in iter_jsonl_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{path}:{line_no}: expected an object with a string \"text\"")
        docs.append({"text": obj["text"], "source": obj.get("source", f"{path}:{line_no}")})
    return docs


def backtranslate(documents: Sequence[dict], generator: ModelGenerator, k: int = 2, seed: int = 0,
                  cfg: BacktranslationConfig = BacktranslationConfig()) -> tuple[list[dict], list[dict]]:
    """For each document that passes the text checks, k candidate instructions; keep the best-scoring usable
    one when its gain passes. Returns (SFT records, one judgement per document with every score)."""
    records, judged = [], []
    for index, doc in enumerate(documents):
        text, doc_seed = doc["text"], query_seed(seed, f"doc-{index}")
        entry = {"document": index, "source": doc["source"], "chars": len(text), "seed": doc_seed,
                 "problems": document_problems(text, cfg), "candidates": [], "kept": False}
        judged.append(entry)
        if entry["problems"]:
            continue
        asks = generator([[{"role": "user", "content": PROMPT.format(document=text)}]], k, [doc_seed])[0]
        asks = [a.strip() for a in asks]
        usable = [a for a in asks if not query_problems(a, text, cfg)]
        baseline = generator.mean_logprob([[{"role": "user", "content": NEUTRAL}]], [text])[0]
        scores = generator.mean_logprob([[{"role": "user", "content": a}] for a in usable], [text] * len(usable))
        gains = dict(zip(usable, (s - baseline for s in scores)))
        entry["candidates"] = [{"instruction": a, "problems": query_problems(a, text, cfg), "gain": gains.get(a)}
                               for a in asks]
        if not gains:
            entry["problems"].append("no usable instruction")
            continue
        best = max(gains, key=gains.get)
        if gains[best] < cfg.min_gain:
            entry["problems"].append(f"best gain {gains[best]:.3f} < {cfg.min_gain}")
            continue
        entry["kept"] = True
        records.append({"messages": [{"role": "user", "content": best}, {"role": "assistant", "content": text}],
                        "provenance": {"family": "long_backtranslation", "source": doc["source"],
                                       "generator": generator.name, "seed": doc_seed, "gain": gains[best],
                                       "baseline_mean_logprob": baseline}})
    return records, judged


def run_backtranslation(docs_path: str | Path, generator: ModelGenerator, out_dir: str | Path, k: int = 2,
                        seed: int = 0, cfg: BacktranslationConfig = BacktranslationConfig()) -> str:
    """Write out_dir/sft.jsonl (kept pairs) and out_dir/judged.jsonl (every document's checks and scores)."""
    documents = read_documents(docs_path)
    if not documents:
        raise ValueError(f"{docs_path}: no documents")
    records, judged = backtranslate(documents, generator, k, seed, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "sft.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out_dir / "judged.jsonl", "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
    return f"back-translation: {len(documents)} documents, {len(records)} kept -> {out_dir}/sft.jsonl"
