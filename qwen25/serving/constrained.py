"""Grammar-constrained decoding for `response_format` (JSON, JSON Schema) and forced tool calls, by llguidance.

llguidance compiles a JSON Schema or a Lark grammar against the tokenizer's vocabulary and, for each step,
gives the set of tokens that keep the output inside the grammar (about 0.1 ms per token); once the grammar is
complete only the end-of-turn tokens are allowed, so the sample stops with text that parses. It plugs into the
engine as a per-request logits processor.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance
import llguidance.torch
import torch


# Compact JSON (no free whitespace): a model, above all a small random one, cannot fill the output with blanks.
COMPACT = {"whitespace_flexible": False}


@lru_cache(maxsize=4)
def grammar_tokenizer(tokenizer_json: str, vocab_size: int, eos_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
    """The vocabulary as llguidance sees it (a second or more to build: built once per tokenizer and model)."""
    return llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_ids))


def json_grammar(schema: dict[str, Any] | None) -> str:
    """Any JSON object (`json_object`), or values of `schema` (`json_schema`)."""
    return llguidance.LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"},
                                                         defaults=COMPACT)


def tool_call_grammar(tools: list[dict], tokenizer_ids: dict[str, int], name: str | None = None) -> str:
    """One or more `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks as Qwen2.5's chat format writes
    them, for any of `tools` (or only the one called `name`), arguments following each tool's parameters."""
    calls = []
    for tool in tools:
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        calls.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                      "properties": {"name": {"const": function["name"]},
                                     "arguments": function.get("parameters") or {"type": "object"}}})
    schema = {"x-guidance": COMPACT, "anyOf": calls} if len(calls) > 1 else {"x-guidance": COMPACT, **calls[0]}
    open_, close = (f"<[{tokenizer_ids[t]}]>" for t in ("<tool_call>", "</tool_call>"))
    return f'start: ({open_} "\\n" call "\\n" {close})+\ncall: %json {json.dumps(schema)}\n'


class GrammarProcessor:
    """A logits processor keeping every sample of one request inside a grammar.

    The engine calls one request's processor for each of its n samples with that sample's output so far, so
    the parser state is looked up by the output: a sample's state is its parent's (one token shorter) advanced
    by its last token. Only the states of the latest two lengths are kept."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self.tokenizer = tokenizer
        self.states: dict[tuple[int, ...], llguidance.LLMatcher] = {(): llguidance.LLMatcher(tokenizer, grammar)}
        self.mask = llguidance.torch.allocate_token_bitmask(1, tokenizer.vocab_size)
        self.bits = torch.tensor([1 << i for i in range(32)], dtype=torch.int64).to(torch.int32)
        root = self.states[()]
        self.error = root.get_error() if root.is_error() else None  # why the grammar cannot be used

    def _state(self, output: list[int]) -> llguidance.LLMatcher:
        key = tuple(output)
        state = self.states.get(key)
        if state is None:
            state = self.states[key[:-1]].deep_copy()
            state.consume_token(key[-1])
            self.states = {k: v for k, v in self.states.items() if len(k) >= len(key) - 1}
            self.states[key] = state
        return state

    def __call__(self, output: list[int], scores: torch.Tensor) -> torch.Tensor:
        state = self._state(output)
        if state.is_error() or state.is_stopped():
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            allowed[self.tokenizer.eos_tokens] = True
        else:
            llguidance.torch.fill_next_token_bitmask(state, self.mask)
            allowed = ((self.mask[0, :, None] & self.bits) != 0).flatten()[: scores.shape[-1]].to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))
