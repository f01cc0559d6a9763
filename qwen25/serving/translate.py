"""OpenAI requests into engine work, and engine results into OpenAI responses.

A chat request becomes one prompt (the tokenizer's chat format, tools included) with its `SamplingParams`; a
completion request one prompt per `prompt` entry. Sampling defaults come from the model's generation_config
for what the request leaves out (as vLLM does); `temperature: 0` is greedy. `max_tokens` must fit the model's
positions: left out, it is the room left (at most 8,192); asked for past it, the request is refused with the
numbers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property

import jsonschema

from qwen25.inference.engine import Completion
from qwen25.inference.sampling import SamplingParams
from qwen25.serving.constrained import (
    GrammarProcessor,
    grammar_tokenizer,
    json_grammar,
    tool_call_grammar,
)
from qwen25.serving.protocol import MAX_NEW_TOKENS, APIError, ChatCompletionRequest, CompletionRequest, SamplingFields
from qwen25.tokenizer.chat import parse_reply
from qwen25.tokenizer.fast import bytes_to_unicode

TOOL_CALL_OPEN = "<tool_call>"
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class ServedModel:
    """What the server knows about the model it serves."""

    name: str
    tokenizer: object  # QwenTokenizer
    vocab_size: int  # the model's (the embedding may have more rows than the tokenizer has tokens)
    max_positions: int
    max_batch: int
    generation_config: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    @cached_property
    def chat_stop_ids(self) -> list[int]:
        tok = self.tokenizer
        return sorted({*_eos_ids(self.generation_config), tok.eos_id, tok.control_ids["<|im_end|>"],
                       tok.endoftext_id})

    @cached_property
    def text_stop_ids(self) -> list[int]:
        return sorted({*_eos_ids(self.generation_config), self.tokenizer.endoftext_id})

    def grammar_tokenizer(self):
        """llguidance's view of the vocabulary (seconds to build the first time; cached)."""
        return grammar_tokenizer(self.tokenizer.tok.to_str(), self.vocab_size, tuple(self.chat_stop_ids))

    @cached_property
    def _token_bytes(self) -> dict[str, int]:
        return {c: b for b, c in bytes_to_unicode().items()}

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id >= self.tokenizer.num_regular_tokens:  # control tokens are spelled as they read
            return piece.encode()
        return bytes(self._token_bytes[c] for c in piece)

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


def _eos_ids(gen: dict) -> list[int]:
    eos = gen.get("eos_token_id")
    return [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])


@dataclass
class Job:
    """Prompts for the engine (one per completion prompt; one for a chat) and how to read the replies."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    parse_tools: bool = False  # read <tool_call> blocks out of the reply into `tool_calls`
    prompt_texts: list[str] = field(default_factory=list)  # completions with echo


# ---- requests -> jobs ----------------------------------------------------------------------------

def new_token_budget(served: ServedModel, n_prompt: int, requested: int | None, param: str, prompt_param: str) -> int:
    room = served.max_positions - n_prompt
    if room <= 0:
        raise APIError(400, f"{prompt_param}: this model's maximum context length is {served.max_positions} tokens, "
                            f"and the prompt has {n_prompt}: no room left to generate. Shorten the prompt.",
                       prompt_param,
                       code="context_length_exceeded")
    if requested is None:
        return min(room, MAX_NEW_TOKENS)
    if requested > room:
        raise APIError(400, f"{param}: this model's maximum context length is {served.max_positions} tokens. The "
                            f"prompt has {n_prompt} tokens and {param} asks for {requested} more "
                            f"({n_prompt + requested} in all); ask for at most {room}.", param,
                       code="context_length_exceeded")
    return requested


def sampling_params(served: ServedModel, req: SamplingFields, max_new_tokens: int, stop_ids: list[int],
                    top_logprobs: int) -> SamplingParams:
    """The request's sampling over the model's generation_config defaults."""
    gen = served.generation_config
    temperature = req.temperature if req.temperature is not None else gen.get("temperature", 1.0)
    do_sample = (req.temperature > 0) if req.temperature is not None else bool(gen.get("do_sample", True))
    params = SamplingParams.from_generation_config(
        gen, max_new_tokens=max_new_tokens, top_p=req.top_p, seed=req.seed,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty)
    params.do_sample = do_sample and temperature > 0
    params.temperature = temperature if params.do_sample else 1.0
    params.stop_token_ids = stop_ids
    params.stop = req.stop_strings()
    params.n = req.n
    params.top_logprobs = top_logprobs
    if params.n > served.max_batch:
        raise APIError(400, f"n: at most {served.max_batch} samples (the server's --max-batch), got {params.n}", "n")
    return params


def check_tools(tools: list[dict]) -> None:
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise APIError(400, f"{where}: expected {{'type': 'function', 'function': {{...}}}}", where)
        function = tool["function"]
        if not isinstance(function.get("name"), str) or not _FUNCTION_NAME.match(function["name"]):
            raise APIError(400, f"{where}.function.name: 1 to 64 letters, digits, '_', '.' or '-', got "
                                f"{function.get('name')!r}", f"{where}.function.name")
        parameters = function.get("parameters")
        if parameters is not None:
            _check_schema(parameters, f"{where}.function.parameters")


def _check_schema(schema: object, param: str) -> None:
    if not isinstance(schema, dict):
        raise APIError(400, f"{param}: a JSON Schema must be an object, got {type(schema).__name__}", param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in e.path)
        raise APIError(400, f"{param}: not a valid JSON Schema: {e.message} (at {path or 'the top'})", param) from None


def template_messages(req: ChatCompletionRequest) -> list[dict]:
    """The messages as the chat format takes them; tool-call arguments parsed from their JSON text."""
    out = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        if m.role == "tool" and (i == 0 or not (out[-1]["role"] == "tool" or out[-1].get("tool_calls"))):
            raise APIError(400, f"{where}.role: a 'tool' message must follow an assistant message with tool_calls "
                                f"(or another tool message)", f"{where}.role")
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"{where}.tool_calls: only assistant messages carry tool calls", f"{where}.tool_calls")
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise APIError(400, f"{where}.content: required for a {m.role} message", f"{where}.content")
        message = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError as e:
                    param = f"{where}.tool_calls[{j}].function.arguments"
                    raise APIError(400, f"{param}: not valid JSON ({e.msg} at char {e.pos})", param) from None
                calls.append({"name": call.function.name, "arguments": arguments})
            message["tool_calls"] = calls
        out.append(message)
    return out


def chat_job(served: ServedModel, req: ChatCompletionRequest) -> Job:
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise APIError(400, "give one of max_tokens and max_completion_tokens", "max_completion_tokens")
    tools = req.tools or []
    check_tools(tools)
    choice = req.tool_choice
    names = [t["function"]["name"] for t in tools]
    if choice is not None and choice != "none" and not tools:
        raise APIError(400, "tool_choice needs tools", "tool_choice")
    forced = None
    if choice is not None and not isinstance(choice, str):
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice: no tool named {choice.function.name!r} in tools ({names})",
                           "tool_choice.function.name")
        forced = choice.function.name
    use_tools = bool(tools) and choice != "none"
    grammar = None
    if use_tools and (choice == "required" or forced):
        grammar = tool_call_grammar(tools, served.tokenizer.control_ids, forced)
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        if grammar is not None:
            raise APIError(400, "response_format cannot apply to a reply that must be a tool call (tool_choice)",
                           "response_format")
        schema = None
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise APIError(400, "response_format.json_schema: required when type is 'json_schema'",
                               "response_format.json_schema")
            schema = fmt.json_schema.schema_
            _check_schema(schema, "response_format.json_schema.schema")
        grammar = json_grammar(schema)
    ids, _ = served.tokenizer.encode_chat(template_messages(req), tools if use_tools else None,
                                          add_generation_prompt=True)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    budget = new_token_budget(served, len(ids), requested, param, "messages")
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    params = sampling_params(served, req, budget, served.chat_stop_ids, (req.top_logprobs or 0) if req.logprobs else 0)
    if grammar is not None:
        processor = GrammarProcessor(served.grammar_tokenizer(), grammar)
        if processor.error:  # a schema llguidance cannot compile is the client's error, found before anything runs
            param = "response_format" if fmt is not None and fmt.type != "text" else "tools"
            raise APIError(400, f"{param}: the schema cannot be used for constrained decoding: {processor.error}",
                           param)
        params.logits_processors = [processor]
    return Job([ids], [params], parse_tools=use_tools)


def completion_job(served: ServedModel, req: CompletionRequest) -> Job:
    prompt = req.prompt
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: empty", "prompt")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo with logprobs (log-probs of the prompt's tokens) is not supported", "echo")
    tok = served.tokenizer
    prompts, texts, params = [], [], []
    for i, p in enumerate(prompt):
        where = f"prompt[{i}]" if len(prompt) > 1 else "prompt"
        ids = tok.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, f"{where}: empty", where)
        bad = [t for t in ids if not 0 <= t < served.vocab_size]
        if bad:
            raise APIError(400, f"{where}: token ids outside the vocabulary of {served.vocab_size}: {bad[:5]}", where)
        budget = new_token_budget(served, len(ids), req.max_tokens, "max_tokens", where)
        prompts.append(ids)
        texts.append(p if isinstance(p, str) else tok.decode(ids))
        params.append(sampling_params(served, req, budget, served.text_stop_ids, req.logprobs or 0))
    return Job(prompts, params, prompt_texts=texts if req.echo else [])


# ---- results -> responses -------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(served: ServedModel, token_ids: list[int], logprobs: list[float],
                  tops: list[dict[int, float]] | None) -> dict:
    def entry(t: int, lp: float) -> dict:
        b = served.token_bytes(t)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    content = []
    for k, (t, lp) in enumerate(zip(token_ids, logprobs)):
        e = entry(t, lp)
        e["top_logprobs"] = [entry(u, v) for u, v in tops[k].items()] if tops else []
        content.append(e)
    return {"content": content}


def completion_logprobs(served: ServedModel, token_ids: list[int], logprobs: list[float],
                        tops: list[dict[int, float]] | None, offset: int) -> dict:
    tokens = [served.token_text(t) for t in token_ids]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
            "top_logprobs": [{served.token_text(u): v for u, v in top.items()} for top in tops] if tops else None}


def tool_calls_of(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a reply that may call tools; ids made unique per call."""
    parsed = parse_reply(text)
    calls = [{**c, "id": f"call_{uuid.uuid4().hex[:24]}"} for c in parsed.tool_calls]
    return (parsed.content or None) if calls else parsed.content, calls


def chat_choice(served: ServedModel, job: Job, c: Completion, want_logprobs: bool) -> dict:
    message: dict = {"role": "assistant", "content": c.text}
    finish = c.finish_reason
    if job.parse_tools:
        message["content"], calls = tool_calls_of(c.text)
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
    lp = chat_logprobs(served, c.token_ids, c.logprobs, c.top_logprobs) if want_logprobs else None
    return {"index": c.index, "message": message, "logprobs": lp, "finish_reason": finish}


class ContentBeforeToolCalls:
    """Streams the text of a reply that may call tools: the content before the first <tool_call>, stripped as
    `parse_reply` strips it (leading blanks dropped, trailing ones held back until more text follows)."""

    def __init__(self) -> None:
        self.text = ""
        self.sent = 0

    def feed(self, piece: str, final: bool) -> str:
        self.text += piece
        cut = self.text.find(TOOL_CALL_OPEN)
        if cut >= 0:
            visible = self.text[:cut].strip()
        else:
            held = next((n for n in range(len(TOOL_CALL_OPEN) - 1, 0, -1)
                         if self.text.endswith(TOOL_CALL_OPEN[:n])), 0)
            visible = (self.text if final else self.text[:len(self.text) - held]).strip()
        out = visible[self.sent:]
        self.sent = max(self.sent, len(visible))
        return out
