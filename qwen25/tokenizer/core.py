"""The Qwen2.5 tokenizer design: byte-level BPE with an NFC normaliser, the Qwen split regex, and 22 control
tokens placed right after the regular vocabulary (SPEC §3).

A `QwenTokenizer` wraps one HF `tokenizer.json` (the on-disk format, which transformers loads) and adds what
the project needs: control-token ids by name, an encoder that never produces control ids from text
(`encode_ordinary`, for documents and chat content), and the chat format. Ordinary encoding runs on
tiktoken's core with the same vocabulary where that provably gives the same ids (`qwen25/tokenizer/fast.py`),
else in the `tokenizers` library; everything else runs in `tokenizers`.
"""

from __future__ import annotations

import json
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from qwen25.io import atomic_write_text
from qwen25.tokenizer.chat import encode_chat, render_chat
from qwen25.tokenizer.fast import FastEncoder, cached_merge_problem, map_in_threads, merge_problem
from qwen25.tokenizer.special import (  # noqa: F401 (re-exported)
    CONTROL_TOKENS,
    DEFAULT_SYSTEM_PROMPT,
    FAST_PAT,
    NUM_SPECIAL,
    PAT,
)


def chat_template() -> str:
    """The Qwen2.5-Instruct chat template (Jinja), exactly as the released tokenizer_config.json has it."""
    return resources.files("qwen25.tokenizer").joinpath("chat_template.jinja").read_text()


def apply_byte_level_pipeline(tok: Tokenizer) -> None:
    """Normaliser, pre-tokeniser, post-processor and decoder shared by the official and trained tokenizers."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def byte_level_pipeline_json() -> dict[str, Any]:
    """The normaliser and pre-tokeniser above as tokenizer.json spells them."""
    tok = Tokenizer(models.BPE())
    apply_byte_level_pipeline(tok)
    raw = json.loads(tok.to_str())
    return {"normalizer": raw["normalizer"], "pre_tokenizer": raw["pre_tokenizer"]}


def add_control_tokens(tok: Tokenizer) -> None:
    """Append the 22 control tokens after the regular vocabulary, in the official order and flags."""
    first = tok.get_vocab_size(with_added_tokens=False)
    for i, content in enumerate(CONTROL_TOKENS):
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                           special=i < NUM_SPECIAL)
        added = tok.add_special_tokens([token]) if i < NUM_SPECIAL else tok.add_tokens([token])
        if added != 1 or tok.token_to_id(content) != first + i:
            raise ValueError(f"control token {content!r} did not get id {first + i}")


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]],
                   config: dict[str, Any] | None = None) -> QwenTokenizer:
    """A tokenizer of this design from a byte-level vocabulary (GPT-2 characters) and its merges in rank
    order, with the 22 control tokens appended: the official one, or one read from a model file."""
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
    apply_byte_level_pipeline(tok)
    add_control_tokens(tok)
    return QwenTokenizer(tok, config)


def tokenizer_config(model_max_length: int = 131072) -> dict[str, Any]:
    """tokenizer_config.json as transformers expects it for a Qwen2 tokenizer with the Instruct template."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "additional_special_tokens": list(CONTROL_TOKENS[1:NUM_SPECIAL]),
        "bos_token": None,
        "chat_template": chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be used; the message names the file and what is wrong."""


class QwenTokenizer:
    """One tokenizer.json plus the control-token layout. Construct with `QwenTokenizer.from_dir`."""

    def __init__(self, tok: Tokenizer, config: dict[str, Any] | None = None, path: Path | None = None) -> None:
        self.tok = tok
        self.config = config or tokenizer_config()
        self.path = path
        self.control_ids = {}
        for content in CONTROL_TOKENS:
            token_id = tok.token_to_id(content)
            if token_id is None:
                raise TokenizerError(f"{path or 'tokenizer'}: control token {content!r} is missing")
            self.control_ids[content] = token_id
        first = self.control_ids[CONTROL_TOKENS[0]]
        if [self.control_ids[c] for c in CONTROL_TOKENS] != list(range(first, first + len(CONTROL_TOKENS))):
            raise TokenizerError(f"{path or 'tokenizer'}: control tokens must have consecutive ids in the "
                                 f"official order starting at {first}")

    # ---- construction and saving ---------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> QwenTokenizer:
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json here")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(f"{file}: cannot load ({e})") from None
        config_file = path / "tokenizer_config.json"
        config = None
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_file}: not valid JSON ({e})") from None
        return cls(tok, config, path)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        raw = json.loads(self.tok.to_str())
        atomic_write_text(directory / "tokenizer.json", json.dumps(raw, ensure_ascii=False, indent=2) + "\n")
        model = raw["model"]
        atomic_write_text(directory / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False) + "\n")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        atomic_write_text(directory / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
        config = dict(self.config)
        config["added_tokens_decoder"] = {
            str(self.control_ids[c]): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": i < NUM_SPECIAL}
            for i, c in enumerate(CONTROL_TOKENS)}
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2) + "\n")
        self.path = directory

    @cached_property
    def _ordinary(self) -> Tokenizer:
        """The same pipeline with no added tokens: text can never turn into a control id."""
        raw = json.loads(self.tok.to_str())
        raw["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(raw))

    @cached_property
    def _fast(self) -> tuple[FastEncoder | None, str | None]:
        """(tiktoken-core encoder, None) where it gives the ids `_ordinary` gives, else (None, why not)."""
        text = self.tok.to_str()
        raw = json.loads(text)
        design = byte_level_pipeline_json()
        for key in design:
            if raw.get(key) != design[key]:
                return None, f"its {key} is not the Qwen2.5 design's"
        problem = cached_merge_problem(text, lambda: merge_problem(raw["model"], self.tok.model))
        if problem:
            return None, problem
        return FastEncoder.build(raw["model"]["vocab"], FAST_PAT), None

    @property
    def ordinary_backend(self) -> str:
        """Which library `encode_ordinary` runs in, and why when it is not tiktoken's core."""
        fast, problem = self._fast
        return "tiktoken" if fast else f"tokenizers ({problem})"

    # ---- ids -----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Regular tokens plus control tokens (a model's embedding may have more rows, as padding)."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def num_regular_tokens(self) -> int:
        return self.control_ids[CONTROL_TOKENS[0]]

    @property
    def eos_id(self) -> int:
        return self.control_ids[self.config.get("eos_token") or "<|im_end|>"]

    @property
    def pad_id(self) -> int:
        return self.control_ids[self.config.get("pad_token") or "<|endoftext|>"]

    @property
    def endoftext_id(self) -> int:
        return self.control_ids["<|endoftext|>"]

    def token_id(self, token: str) -> int:
        token_id = self.tok.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return token_id

    # ---- encode / decode -----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """As transformers encodes: control-token spellings in the text become control ids."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text only: a literal '<|im_start|>' stays text. Use for documents and message content."""
        fast = self._fast[0]
        if fast is not None:
            try:
                return fast.encode(text)
            except (TypeError, UnicodeEncodeError):
                pass  # not a str, or lone surrogates: the tokenizers path raises its usual error
        return self._ordinary.encode(text, add_special_tokens=False).ids

    def encode_ordinary_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The same ids as `encode_ordinary`, with character offsets (from the tokenizers path)."""
        enc = self._ordinary.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: list[str], ordinary: bool = True, num_threads: int | None = None) -> list[list[int]]:
        """Many texts at once on `num_threads` threads (default: all usable CPUs; tiktoken's core path) or
        on the tokenizers library's own thread pool (its path, sized by it)."""
        if ordinary and self._fast[0] is not None:
            return map_in_threads(self.encode_ordinary, texts, num_threads)
        tok = self._ordinary if ordinary else self.tok
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = False) -> str:
        return render_chat(messages, tools, add_generation_prompt).text

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None,
                    add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """(ids, assistant_mask): the mask marks the tokens an SFT loss trains on."""
        return encode_chat(self, messages, tools, add_generation_prompt)
