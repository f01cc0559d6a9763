"""SFT conversations: JSONL in the OpenAI messages format, checked line by line and encoded with the chat format
into token ids and labels that train on assistant tokens only.

One line: `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "...", "tool_calls": [...]}],
"tools": [...]}` (tools optional). Tool-call arguments may be an object or, as the OpenAI API sends them, a JSON
string; the Qwen2.5 template writes them as an object either way, so a string is parsed (and must be JSON).

A bad line is an error naming the file and line; a conversation longer than the limit is dropped or truncated
as the recipe says, and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwen25.io import iter_jsonl_lines
from qwen25.tokenizer import QwenTokenizer

ROLES = ("system", "user", "assistant", "tool")


class ConversationError(ValueError):
    """A conversation that cannot be trained on; the message names the file and line."""


@dataclass
class Example:
    """One encoded conversation: ids [n] and, for each position, whether the NEXT token is a training target."""

    ids: np.ndarray  # int32 [n]
    target: np.ndarray  # bool [n]: position t predicts ids[t + 1], trained when target[t]
    source: str  # "file:line"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        return int(self.target.sum())


@dataclass
class EncodeStats:
    read: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    tokens: int = 0
    target_tokens: int = 0

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        return (f"{self.read} conversations read, {self.kept} kept ({self.truncated} truncated), dropped: {dropped}; "
                f"{self.tokens:,} tokens, {self.target_tokens:,} assistant targets")


def normalise_messages(messages, where: str) -> list[dict]:
    """Check roles, contents and tool calls; tool-call arguments as objects. Raises ConversationError."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise ConversationError(f"{at}: must be an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ConversationError(f"{at}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise ConversationError(f"{at} ({role}): 'content' must be a string, got {type(content).__name__}")
        message = {"role": role, "content": content}
        if m.get("tool_calls"):
            if role != "assistant":
                raise ConversationError(f"{at}: only assistant messages carry tool_calls, not {role}")
            message["tool_calls"] = [_tool_call(c, f"{at}.tool_calls[{j}]") for j, c in enumerate(m["tool_calls"])]
        out.append(message)
    if not any(m["role"] == "assistant" for m in out):
        raise ConversationError(f"{where}: no assistant turn, nothing to train on")
    return out


def _tool_call(call, at: str) -> dict:
    if not isinstance(call, dict):
        raise ConversationError(f"{at}: must be an object")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ConversationError(f"{at}: needs a function name")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ConversationError(f"{at}: arguments are not JSON ({e.msg} at char {e.pos}): {arguments[:80]!r}") from None
    if not isinstance(arguments, dict):
        raise ConversationError(f"{at}: arguments must be a JSON object, got {type(arguments).__name__}")
    return {"type": "function", "function": {"name": fn["name"], "arguments": arguments}}


def encode_conversation(tok: QwenTokenizer, messages: list[dict], tools: list[dict] | None,
                        source: str) -> Example:
    ids, mask = tok.encode_chat(messages, tools=tools)
    ids_arr = np.asarray(ids, dtype=np.int32)
    mask_arr = np.asarray(mask, dtype=bool)
    target = np.zeros(len(ids_arr), dtype=bool)
    target[:-1] = mask_arr[1:]  # position t is trained when token t + 1 is an assistant token
    return Example(ids_arr, target, source)


def read_conversations(path: str | Path) -> Iterator[tuple[str, list[dict], list[dict] | None]]:
    """(where, messages, tools) per line, checked; malformed lines raise ConversationError with file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SFT data file not found")
    try:
        for line_no, obj in iter_jsonl_lines(path):
            where = f"{path}:{line_no}"
            if not isinstance(obj, dict) or "messages" not in obj:
                raise ConversationError(f"{where}: expected an object with a 'messages' list")
            tools = obj.get("tools")
            if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
                raise ConversationError(f"{where}: 'tools' must be a list of objects")
            yield where, normalise_messages(obj["messages"], where), tools
    except UnicodeDecodeError as e:
        raise ConversationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        if isinstance(e, ConversationError):
            raise
        raise ConversationError(str(e)) from None  # iter_jsonl_lines: "path:line: not valid JSON (...)"


def load_examples(paths: list[str | Path], tok: QwenTokenizer, max_len: int, overlong: str = "drop",
                  stats: EncodeStats | None = None) -> list[Example]:
    """Encode every conversation of `paths`; over-long ones are dropped or truncated (`overlong`)."""
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
    stats = stats if stats is not None else EncodeStats()
    out = []
    for path in paths:
        for where, messages, tools in read_conversations(path):
            stats.read += 1
            try:
                example = encode_conversation(tok, messages, tools, where)
            except ValueError as e:
                raise ConversationError(f"{where}: {e}") from None
            if len(example) > max_len:
                if overlong == "drop":
                    stats.dropped[f"longer than {max_len} tokens"] += 1
                    continue
                example = Example(example.ids[:max_len], example.target[:max_len].copy(), where)
                example.target[-1] = False  # its next token was cut off
                stats.truncated += 1
            if example.n_targets == 0:
                stats.dropped["no assistant token within the length limit"] += 1
                continue
            stats.kept += 1
            stats.tokens += len(example)
            stats.target_tokens += example.n_targets
            out.append(example)
    return out
