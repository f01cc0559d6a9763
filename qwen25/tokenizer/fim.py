"""Fill-in-the-middle prompts for code (Qwen2.5-Coder's format), for data pipelines and evaluation.

File-level, prefix-suffix-middle: `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}`.
Repository-level: `<|repo_name|>{name}\n<|file_sep|>{path}\n{content}\n<|file_sep|>{path}\n{content}...`.
Ids are built from control ids plus ordinary encodings, so code that spells a control token stays text.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen25.tokenizer.core import QwenTokenizer


def fim_text(prefix: str, suffix: str, middle: str = "") -> str:
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}"


def fim_ids(tok: QwenTokenizer, prefix: str, suffix: str, middle: str = "") -> list[int]:
    c = tok.control_ids
    ids = [c["<|fim_prefix|>"], *tok.encode_ordinary(prefix), c["<|fim_suffix|>"], *tok.encode_ordinary(suffix),
           c["<|fim_middle|>"]]
    return ids + tok.encode_ordinary(middle) if middle else ids


def repo_text(repo_name: str, files: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<|file_sep|>{path}\n{content}" for path, content in files)
    return f"<|repo_name|>{repo_name}\n{body}"


def repo_ids(tok: QwenTokenizer, repo_name: str, files: list[tuple[str, str]]) -> list[int]:
    c = tok.control_ids
    ids = [c["<|repo_name|>"], *tok.encode_ordinary(f"{repo_name}\n")]
    for n, (path, content) in enumerate(files):
        ids += [c["<|file_sep|>"], *tok.encode_ordinary(f"{path}\n{content}" + ("\n" if n < len(files) - 1 else ""))]
    return ids


def split_for_fim(document: str, rng: random.Random) -> tuple[str, str, str]:
    """Two uniform cut points (by character) -> (prefix, middle, suffix), as FIM training data is made."""
    a, b = sorted(rng.randint(0, len(document)) for _ in range(2))
    return document[:a], document[a:b], document[b:]


def maybe_fim(tok: QwenTokenizer, document: str, rng: random.Random, rate: float = 0.5) -> list[int]:
    """With probability `rate`, a document as a PSM training example; otherwise its plain ids."""
    if rng.random() >= rate:
        return tok.encode_ordinary(document)
    prefix, middle, suffix = split_for_fim(document, rng)
    return fim_ids(tok, prefix, suffix, middle)
