"""The Qwen2.5 chat format (ChatML with Hermes-style tools), rendered in Python exactly as the released
Jinja template renders it, plus token ids with an assistant mask for SFT and a parser for model replies.

Why not render the Jinja and tokenize the string? Because then a user who types `<|im_start|>` injects a
real control token. Here only the template's own text can produce control ids; message content, tool
schemas and tool-call arguments are always encoded as ordinary text. For any conversation whose text does
not spell a control token, the ids are identical to tokenizing the rendered string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwen25.tokenizer.special import CONTROL_TOKENS, DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:
    from qwen25.tokenizer.core import QwenTokenizer

_CONTROL_RE = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS))

TOOLS_HEADER = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")


def tojson(value: Any) -> str:
    """The template's `tojson` as transformers defines it: no HTML escaping, keys in given order."""
    return json.dumps(value, ensure_ascii=False)


@dataclass
class RenderedChat:
    """The rendered string, where the template itself put control tokens, and what an SFT loss trains on."""

    text: str = ""
    control_spans: list[tuple[int, int]] = field(default_factory=list)
    train_spans: list[tuple[int, int]] = field(default_factory=list)

    def template(self, s: str, train: bool = False) -> None:
        """Text written by the template: control-token spellings in it are real control tokens."""
        start = len(self.text)
        self.control_spans += [(start + m.start(), start + m.end()) for m in _CONTROL_RE.finditer(s)]
        self._append(s, train)

    def content(self, s: str, train: bool = False) -> None:
        """Text that came from a message or a tool: never control tokens."""
        self._append(s, train)

    def _append(self, s: str, train: bool) -> None:
        if train and s:
            start, end = len(self.text), len(self.text) + len(s)
            if self.train_spans and self.train_spans[-1][1] == start:  # one span per assistant turn, not per piece
                start = self.train_spans.pop()[0]
            self.train_spans.append((start, end))
        self.text += s


def _text(message: dict, index: int) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"messages[{index}] ({message.get('role')}): 'content' must be a string, got "
                         f"{type(content).__name__}")
    return content


def render_chat(messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> RenderedChat:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"messages[{i}]: unknown role {m.get('role')!r} (system, user, assistant, tool)")
    out = RenderedChat()
    first_is_system = messages[0]["role"] == "system"
    system = _text(messages[0], 0) if first_is_system else DEFAULT_SYSTEM_PROMPT
    out.template("<|im_start|>system\n")
    out.content(system)
    if tools:
        out.template(TOOLS_HEADER)
        for tool in tools:
            out.template("\n")
            out.content(tojson(tool))
        out.template(TOOLS_FOOTER)
    else:
        out.template("<|im_end|>\n")

    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system" and i == 0:
            continue
        if role in ("user", "system") or (role == "assistant" and not m.get("tool_calls")):
            train = role == "assistant"
            out.template(f"<|im_start|>{role}\n")
            out.content(_text(m, i), train=train)
            out.template("<|im_end|>", train=train)
            out.template("\n")
        elif role == "assistant":
            out.template("<|im_start|>assistant")
            if m.get("content"):
                out.template("\n")
                out.content(_text(m, i), train=True)
            for call in m["tool_calls"]:
                call = call.get("function", call)
                if "name" not in call:
                    raise ValueError(f"messages[{i}]: a tool call needs a 'name'")
                out.template('\n<tool_call>\n{"name": "', train=True)
                out.content(str(call["name"]), train=True)
                out.template('", "arguments": ', train=True)
                out.content(tojson(call.get("arguments")), train=True)
                out.template("}\n</tool_call>", train=True)
            out.template("<|im_end|>", train=True)
            out.template("\n")
        else:  # tool: consecutive tool messages share one user turn
            if i == 0 or messages[i - 1]["role"] != "tool":
                out.template("<|im_start|>user")
            out.template("\n<tool_response>\n")
            out.content(_text(m, i))
            out.template("\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                out.template("<|im_end|>\n")
    if add_generation_prompt:
        out.template("<|im_start|>assistant\n")
    return out


def encode_chat(tok: QwenTokenizer, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Ids and a mask marking assistant tokens (content, tool calls and the closing <|im_end|>)."""
    chat = render_chat(messages, tools, add_generation_prompt)
    ids: list[int] = []
    starts: list[int] = []
    pos = 0
    for c_start, c_end in chat.control_spans + [(len(chat.text), len(chat.text))]:
        if c_start > pos:
            piece_ids, offsets = tok.encode_ordinary_with_offsets(chat.text[pos:c_start])
            ids += piece_ids
            starts += [pos + a for a, _ in offsets]
        if c_end > c_start:
            ids.append(tok.control_ids[chat.text[c_start:c_end]])
            starts.append(c_start)
        pos = c_end
    trained = bytearray(len(chat.text))  # per character, so the mask is one lookup per token, not a span scan
    for a, b in chat.train_spans:
        trained[a:b] = b"\x01" * (b - a)
    mask = [bool(trained[s]) for s in starts]
    return ids, mask


@dataclass
class ParsedReply:
    """A model reply split into text content and OpenAI-style tool calls; bad calls are listed, not raised."""

    content: str
    tool_calls: list[dict]
    errors: list[str]


_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_reply(text: str) -> ParsedReply:
    """Split decoded assistant output (control tokens kept) into content and `tool_calls`."""
    text = text.split("<|im_end|>")[0].split("<|endoftext|>")[0]
    calls, errors = [], []
    for n, match in enumerate(_TOOL_CALL_RE.finditer(text)):
        body = match.group(1)
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            errors.append(f"tool call {n}: invalid JSON ({e.msg} at char {e.pos}): {body[:200]!r}")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            errors.append(f"tool call {n}: expected an object with a string 'name', got {body[:200]!r}")
            continue
        arguments = call.get("arguments", {})
        calls.append({"id": f"call_{n}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}})
    unterminated = text.rfind("<tool_call>") > text.rfind("</tool_call>")
    if unterminated:
        errors.append("a <tool_call> block is not closed by </tool_call>")
    first = text.find("<tool_call>")
    content = (text if first < 0 else text[:first]).strip()
    return ParsedReply(content=content, tool_calls=calls, errors=errors)
