"""Train a byte-level BPE tokenizer of the Qwen2.5 design at any vocabulary size.

Same normaliser, split regex and byte-level alphabet as the official tokenizer, with the same 22 control
tokens placed right after the regular vocabulary, saved in the same directory format; so a model trained
with it uses the chat format, FIM helpers and checkpoints unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from qwen25.io import iter_jsonl_lines
from qwen25.tokenizer.core import CONTROL_TOKENS, QwenTokenizer, add_control_tokens, apply_byte_level_pipeline, tokenizer_config


def iter_texts(paths: Iterable[str | Path], jsonl_field: str = "text") -> Iterator[str]:
    """Documents from plain-text files (one document per file) or JSONL files (one per line)."""
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            for line_no, doc in iter_jsonl_lines(path):
                if not isinstance(doc, dict) or not isinstance(doc.get(jsonl_field), str):
                    raise ValueError(f"{path}:{line_no}: expected an object with a string '{jsonl_field}' field")
                yield doc[jsonl_field]
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def train_bbpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
               show_progress: bool = True) -> QwenTokenizer:
    """`vocab_size` counts the 22 control tokens too, so it can equal a model's embedding rows."""
    regular = vocab_size - len(CONTROL_TOKENS)
    if regular < 256:
        raise ValueError(f"vocab_size {vocab_size} leaves {regular} regular tokens; byte-level BPE needs at "
                         f"least 256 (+{len(CONTROL_TOKENS)} control tokens)")
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    apply_byte_level_pipeline(tok)
    trainer = BpeTrainer(vocab_size=regular, min_frequency=min_frequency, show_progress=show_progress,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    add_control_tokens(tok)
    return QwenTokenizer(tok, tokenizer_config(model_max_length=32768))


def bytes_per_token(tok: QwenTokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token on `texts`: the compression figure to compare tokenizers by."""
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return n_bytes / max(n_tokens, 1)
