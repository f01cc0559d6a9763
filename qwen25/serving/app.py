"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health, /metrics and a
chat page at / that talks to the same API.

Every refusal is an OpenAI error object (`{"error": {"message", "type", "param", "code"}}`): malformed JSON or
a field of the wrong type or range is a 400 naming the field, an unknown model a 404, a full queue a 429, a
missing or wrong API key a 401. A client that goes away (streaming or not) cancels its request: the engine
frees its rows at the next step.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from qwen25.inference.engine import Delta, QueueFull
from qwen25.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest
from qwen25.serving.runner import EngineFailed, EngineRunner
from qwen25.serving.translate import (
    ContentBeforeToolCalls,
    Job,
    ServedModel,
    chat_choice,
    chat_job,
    chat_logprobs,
    completion_job,
    completion_logprobs,
    new_id,
    usage,
)

CHAT_PAGE = Path(__file__).with_name("chat.html")  # one static page, no external assets: works offline
DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there


_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list|none)$|[\[\]-]")  # pydantic names the union member


def _field(loc: tuple) -> str:
    """('body', 'messages', 0, 'content', 'str') -> 'messages[0].content'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, str) and _UNION_MEMBER.search(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(exc: RequestValidationError) -> APIError:
    error = exc.errors()[0]
    if error.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
    where = _field(tuple(error.get("loc", ())))
    if error.get("type") == "model_attributes_type" or not where:
        return APIError(400, f"the request body must be a JSON object: {error['msg']}")
    return APIError(400, f"{where}: {error['msg']}", where)


class Generation:
    """The deltas of a job's engine requests, as they come; cancels them if the client goes away first."""

    def __init__(self, runner: EngineRunner, http: Request, job: Job) -> None:
        self.runner, self.http, self.job = runner, http, job
        self.ids: list[str] = []
        self.queues: list[asyncio.Queue] = []
        self.unfinished = sum(p.n for p in job.params)
        try:
            for prompt, params in zip(job.prompts, job.params):
                request_id, queue = runner.submit(prompt, params)
                self.ids.append(request_id)
                self.queues.append(queue)
        except QueueFull as e:
            self.close()
            raise APIError(429, f"the server is busy: {e}; retry later", type="rate_limit_error",
                           code="queue_full") from None
        except EngineFailed as e:
            self.close()
            raise APIError(503, f"the engine has failed ({e}); restart the server", type="server_error") from None
        except ValueError as e:
            self.close()
            raise APIError(400, str(e)) from None

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(prompt index, delta) until every sample has finished."""
        getters = {asyncio.ensure_future(q.get()): i for i, q in enumerate(self.queues)}
        try:
            while self.unfinished:
                done, _ = await asyncio.wait(getters, timeout=DISCONNECT_POLL, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if await self.http.is_disconnected():
                        return
                    continue
                for task in done:
                    i = getters.pop(task)
                    item = task.result()
                    if isinstance(item, EngineFailed):
                        raise APIError(503, f"the engine has failed ({item})", type="server_error")
                    if item.finish_reason is not None:
                        self.unfinished -= 1
                    if self.unfinished:
                        getters[asyncio.ensure_future(self.queues[i].get())] = i
                    yield i, item
        finally:
            for task in getters:
                task.cancel()
            self.close()

    def close(self) -> None:
        """Cancel what has not finished (nothing, when the job ran to its end)."""
        for request_id in self.ids:
            if self.unfinished:
                self.runner.cancel(request_id)
            else:
                self.runner.release(request_id)


async def _closing(chunks: AsyncIterator[str], generation: Generation) -> AsyncIterator[str]:
    """The chunks of a stream; when the client goes away mid-stream, its requests are cancelled."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        generation.close()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(served: ServedModel, runner: EngineRunner, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="qwen25", docs_url=None, redoc_url=None, openapi_url=None)
    counters = {"requests": 0, "rejected": 0}

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        counters["rejected"] += 1
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        counters["rejected"] += 1
        return JSONResponse(validation_error(exc).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                err = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key")
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    def check_model(name: str) -> None:
        if name != served.name:
            raise APIError(404, f"model {name!r} is not served here; this server serves {served.name!r}", "model",
                           code="model_not_found")

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "qwen25",
                "max_model_len": served.max_positions}

    @app.get("/")
    async def chat_page():
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        if runner.failure is not None:
            return JSONResponse({"status": "failed", "error": runner.failure}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        m = runner.engine.metrics()
        lines = [
            ("qwen25_requests_waiting", "gauge", "requests queued, not started", m.waiting),
            ("qwen25_requests_running", "gauge", "requests being prefilled or decoded", m.running),
            ("qwen25_batch_rows", "gauge", "sequences in the decode batch", m.rows),
            ("qwen25_prompt_tokens_total", "counter", "prompt tokens prefilled", m.prefill_tokens),
            ("qwen25_generation_tokens_total", "counter", "tokens generated", m.generated_tokens),
            ("qwen25_generation_tokens_per_second", "gauge", "tokens generated per second, recent",
             m.tokens_per_second),
            ("qwen25_time_to_first_token_seconds", "gauge", "mean time to first token, latest requests",
             m.mean_time_to_first_token or 0.0),
            ("qwen25_http_requests_total", "counter", "completion requests received", counters["requests"]),
            ("qwen25_http_requests_rejected_total", "counter", "requests refused with an error", counters["rejected"]),
        ]
        text = "".join(f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {v}\n" for n, t, h, v in lines)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, http: Request):
        counters["requests"] += 1
        check_model(req.model)
        job = await asyncio.to_thread(chat_job, served, req)
        generation = Generation(runner, http, job)
        head = {"id": new_id("chatcmpl"), "created": int(time.time()), "model": served.name}
        if req.stream:
            return StreamingResponse(_closing(chat_stream(req, job, generation, head), generation),
                                     media_type="text/event-stream")
        finished = {}
        async for _, delta in generation.deltas():
            if delta.finish_reason is not None:
                finished[delta.index] = delta.completion
        choices = [chat_choice(served, job, finished[i], req.logprobs) for i in sorted(finished)]
        return {**head, "object": "chat.completion", "choices": choices,
                "usage": usage(len(job.prompts[0]), sum(len(c.token_ids) for c in finished.values()))}

    async def chat_stream(req: ChatCompletionRequest, job: Job, generation: Generation, head: dict):
        head = {**head, "object": "chat.completion.chunk"}
        n = job.params[0].n
        filters = [ContentBeforeToolCalls() for _ in range(n)] if job.parse_tools else None
        for i in range(n):
            yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        generated = 0
        async for _, d in generation.deltas():
            generated += len(d.token_ids)
            final = d.finish_reason is not None
            text = filters[d.index].feed(d.text, final) if filters else d.text
            choice = {"index": d.index, "delta": {"content": text} if text else {}, "finish_reason": None,
                      "logprobs": chat_logprobs(served, d.token_ids, d.logprobs, d.top_logprobs)
                      if req.logprobs and d.token_ids else None}
            if final:
                finish = d.finish_reason
                if job.parse_tools:
                    calls = chat_choice(served, job, d.completion, False)["message"].get("tool_calls")
                    if calls:
                        choice["delta"]["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
                        finish = "tool_calls"
                choice["finish_reason"] = finish
            if choice["delta"] or final or choice["logprobs"]:
                yield _sse({**head, "choices": [choice]})
        if req.stream_options and req.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": usage(len(job.prompts[0]), generated)})
        yield _sse("[DONE]")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: Request):
        counters["requests"] += 1
        check_model(req.model)
        job = await asyncio.to_thread(completion_job, served, req)
        generation = Generation(runner, http, job)
        head = {"id": new_id("cmpl"), "created": int(time.time()), "model": served.name, "object": "text_completion"}
        n = job.params[0].n
        if req.stream:
            return StreamingResponse(_closing(completion_stream(req, job, generation, head), generation),
                                     media_type="text/event-stream")
        finished = {}
        async for p, delta in generation.deltas():
            if delta.finish_reason is not None:
                finished[p * n + delta.index] = (p, delta.completion)
        choices = []
        for index in sorted(finished):
            p, c = finished[index]
            prefix = job.prompt_texts[p] if job.prompt_texts else ""
            lp = (completion_logprobs(served, c.token_ids, c.logprobs, c.top_logprobs, len(prefix))
                  if req.logprobs is not None else None)
            choices.append({"index": index, "text": prefix + c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        return {**head, "choices": choices,
                "usage": usage(sum(map(len, job.prompts)), sum(len(c.token_ids) for _, c in finished.values()))}

    async def completion_stream(req: CompletionRequest, job: Job, generation: Generation, head: dict):
        n = job.params[0].n
        offsets: dict[int, int] = {}
        generated = 0
        for p, text in enumerate(job.prompt_texts):
            for i in range(n):
                offsets[p * n + i] = len(text)
                yield _sse({**head, "choices": [{"index": p * n + i, "text": text, "logprobs": None,
                                                 "finish_reason": None}]})
        async for p, d in generation.deltas():
            index = p * n + d.index
            generated += len(d.token_ids)
            lp = None
            if req.logprobs is not None and d.token_ids:
                lp = completion_logprobs(served, d.token_ids, d.logprobs, d.top_logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(d.text)
            if d.text or d.finish_reason or lp:
                yield _sse({**head, "choices": [{"index": index, "text": d.text, "logprobs": lp,
                                                 "finish_reason": d.finish_reason}]})
        if req.stream_options and req.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": usage(sum(map(len, job.prompts)), generated)})
        yield _sse("[DONE]")

    return app
