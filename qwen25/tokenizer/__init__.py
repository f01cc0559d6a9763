"""Byte-level BPE tokenizers of the Qwen2.5 design: the official one, trained ones, chat format, FIM."""

from functools import lru_cache
from pathlib import Path

from qwen25.tokenizer.core import CONTROL_TOKENS, PAT, QwenTokenizer, TokenizerError
from qwen25.tokenizer.official import official_tokenizer

__all__ = ["CONTROL_TOKENS", "PAT", "QwenTokenizer", "TokenizerError", "load_tokenizer", "official_tokenizer"]


def load_tokenizer(path_or_name: str | Path) -> QwenTokenizer:
    """'qwen2.5' gives the official tokenizer (built on first use); anything else is a directory."""
    if str(path_or_name).lower() in ("qwen2.5", "qwen2.5-official", "official"):
        return _official()
    return QwenTokenizer.from_dir(path_or_name)


@lru_cache(maxsize=1)
def _official() -> QwenTokenizer:
    """One shared instance per process: loading the 151K-token vocabulary takes about a second."""
    return official_tokenizer()
