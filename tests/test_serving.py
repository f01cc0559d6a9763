"""The OpenAI-compatible server, checked with the official `openai` client against a server on 127.0.0.1 over a
tiny random model with the official vocabulary: streaming equals non-streaming, concurrent requests get what
they get alone, tool calls round-trip, JSON output parses and validates, bad requests get OpenAI errors and the
server keeps serving, a client that goes away frees its slot, the API key is enforced."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # the HTTP client the openai package is built on
import jsonschema
import openai
import pytest
from serving_helpers import MAX_POSITIONS, MODEL, chromium_paths, headless_chromium, running_server, tiny_model

from qwen25.inference.engine import Engine
from qwen25.inference.hub import is_cached
from qwen25.inference.sampling import SamplingParams
from qwen25.loading import load_model
from qwen25.serving.runner import EngineRunner
from qwen25.tokenizer import load_tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pet"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pet": {"enum": ["cat", "dog", "none"]}}}


@pytest.fixture(scope="module")
def server():
    with running_server(max_batch=8, max_queue=64) as (url, runner):
        yield url, runner


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, content, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def streamed_text(client, content, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 12)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                            stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}


def test_chat_matches_the_engine_and_counts_usage(client):
    tok = load_tokenizer("qwen2.5")
    reply = chat(client, "Name a prime.")
    ids, _ = tok.encode_chat([{"role": "user", "content": "Name a prime."}], add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == 12 and reply.usage.total_tokens == len(ids) + 12
    assert reply.choices[0].finish_reason == "length" and reply.object == "chat.completion"
    alone = Engine(tiny_model(), tok, kernels="linear").generate(
        [ids], SamplingParams(max_new_tokens=12, stop_token_ids=[tok.eos_id, tok.endoftext_id]))[0].completions[0]
    assert reply.choices[0].message.content == alone.text


def test_stream_joins_to_the_non_streamed_reply(client):
    for prompt in ["Hello!", "Write a haiku about rain.", "中文可以吗？"]:
        alone = chat(client, prompt, max_tokens=20).choices[0].message.content
        assert streamed_text(client, prompt, max_tokens=20) == alone


def test_stream_reports_usage_last(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 temperature=0, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1] if c.choices][-1] == "length"


def test_n_samples_seeded_and_reproducible(client):
    a = chat(client, "Pick a word.", n=4, temperature=1.0, seed=7, max_tokens=8)
    b = chat(client, "Pick a word.", n=4, temperature=1.0, seed=7, max_tokens=8)
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # four draws from a nearly uniform distribution differ
    assert a.usage.completion_tokens == 32


def test_logprobs_are_log_probabilities_and_the_greedy_token_is_the_top_one(client):
    reply = chat(client, "Count: 1, 2,", logprobs=True, top_logprobs=3, max_tokens=6)
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == reply.choices[0].message.content


def test_stop_string_cuts_the_reply(client):
    full = chat(client, "Say something.", max_tokens=20).choices[0].message.content
    stop = full[5:8]
    reply = chat(client, "Say something.", max_tokens=20, stop=[stop])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full[:full.find(stop)]


def test_completions_text_logprobs_and_several_prompts(client):
    one = client.completions.create(model=MODEL, prompt="def fib(n):", max_tokens=6, temperature=0, logprobs=2)
    assert one.object == "text_completion" and len(one.choices[0].logprobs.tokens) == 6
    assert "".join(one.choices[0].logprobs.tokens) == one.choices[0].text
    both = client.completions.create(model=MODEL, prompt=["def fib(n):", "Once upon"], max_tokens=6, temperature=0,
                                     n=2)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert both.choices[0].text == both.choices[1].text == one.choices[0].text  # greedy: n samples agree
    ids = load_tokenizer("qwen2.5").encode("def fib(n):")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == one.choices[0].text
    echo = client.completions.create(model=MODEL, prompt="def fib(n):", max_tokens=6, temperature=0, echo=True)
    assert echo.choices[0].text == "def fib(n):" + one.choices[0].text


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0,
                                           max_tokens=60,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0,
                                           max_tokens=10, tool_choice="none")
    assert final.choices[0].finish_reason == "length" and final.choices[0].message.content
    # the tool result reached the prompt: the chat format renders it as a <tool_response> turn
    tok = load_tokenizer("qwen2.5")
    rendered = tok.apply_chat_template([messages[0], {"role": "assistant", "content": "", "tool_calls": [
        {"name": "get_weather", "arguments": json.loads(call.function.arguments)}]}, messages[2]],
        add_generation_prompt=True)
    assert final.usage.prompt_tokens == len(tok.encode(rendered))
    streamed = client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[WEATHER], temperature=0,
                                              max_tokens=60, tool_choice="required", stream=True)
    calls = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"


def test_json_schema_output_validates_in_100_of_100_samples(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda seed: chat(client, "Describe a person as JSON.", n=5, temperature=1.0,
                                                  seed=seed, max_tokens=80, response_format=fmt), range(20)))
    samples = [c for r in replies for c in r.choices]
    assert len(samples) == 100
    for c in samples:
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), PERSON)


def test_json_object_mode_gives_an_object(client):
    reply = chat(client, "JSON please.", n=4, temperature=1.0, seed=3, max_tokens=100,
                 response_format={"type": "json_object"})
    stopped = [c for c in reply.choices if c.finish_reason == "stop"]
    assert stopped
    for c in stopped:
        assert isinstance(json.loads(c.message.content), dict)


def test_concurrent_streams_equal_their_replies_alone(client):
    prompts = [(f"Question {i}: what is {i} + {i}?", 4 + 3 * (i % 7)) for i in range(32)]
    alone = [chat(client, p, max_tokens=m).choices[0].message.content for p, m in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda pm: streamed_text(client, pm[0], max_tokens=pm[1]), prompts))
    assert together == alone


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_client_that_goes_away_frees_its_slot(server):
    url = server[0]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "temperature": 0,
            "max_tokens": 400, "stream": True}
    generated = metric(url, "qwen25_generation_tokens_total")
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert metric(url, "qwen25_requests_running") == 1
    deadline = time.monotonic() + 20
    while metric(url, "qwen25_requests_running") != 0:
        assert time.monotonic() < deadline, "the abandoned request still runs"
        time.sleep(0.1)
    assert metric(url, "qwen25_generation_tokens_total") - generated < 400


BAD_REQUESTS = [
    ("not json", 400, None),
    ({"model": MODEL, "messages": "hi"}, 400, "messages"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_POSITIONS}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "word " * MAX_POSITIONS}]}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 99}, 400, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     400, "response_format.json_schema.schema"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
     400, "tools[0].function.parameters"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}]},
     400, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     400, "messages[1].tool_calls[0].function.arguments"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
]


@pytest.mark.parametrize("body, status, param", BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, status, param):
    url = server[0]
    kwargs = ({"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str)
              else {"json": body})
    response = httpx.post(url + "/v1/chat/completions", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert error["param"] == param, error
    if param:
        assert param in error["message"] or status == 404
    assert chat(client, "still there?", max_tokens=2).choices[0].finish_reason == "length"


def test_completions_refuse_bad_prompts(server):
    url = server[0]
    for body, param in [({"model": MODEL, "prompt": [1, 999999]}, "prompt"),
                        ({"model": MODEL, "prompt": ""}, "prompt"),
                        ({"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
                        ({"model": MODEL, "prompt": "x", "echo": True, "logprobs": 1}, "echo")]:
        response = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_api_key_and_full_queue():
    with running_server(max_batch=1, max_queue=1, api_key="sekret") as (url, _):
        assert httpx.get(url + "/v1/models").status_code == 401
        no_key = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            no_key.models.list()
        ok = openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0, timeout=60)
        assert chat(ok, "hi", max_tokens=2).choices[0].message.content is not None
        body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "temperature": 0, "max_tokens": 100}
        headers = {"authorization": "Bearer sekret"}
        statuses = []
        barrier = threading.Barrier(4)

        def post():
            barrier.wait()
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
            statuses.append((r.status_code, r.json()))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(s for s, _ in statuses)
        assert 200 in codes and 429 in codes, statuses  # one runs, one waits, the rest are turned away
        assert all(b["error"]["code"] == "queue_full" for s, b in statuses if s == 429)


REAL = "qwen2.5-coder-0.5b-instruct"


@pytest.mark.slow
@pytest.mark.skipif(not is_cached(REAL), reason=f"{REAL} is not fetched (qwen25 models fetch {REAL})")
def test_real_model_chat_and_tool_round_trip():
    model = load_model(REAL, dtype="bfloat16").eval()
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                             "parameters": city}}
    with running_server(model=model, max_batch=4) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        answer = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=10, messages=[
            {"role": "user", "content": "What is 2+3? Answer with the number only."}])
        assert answer.choices[0].message.content.strip() == "5"
        messages = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
        first = client.chat.completions.create(model=MODEL, messages=messages, tools=[tool], temperature=0,
                                               max_tokens=60, tool_choice="required")
        call = first.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"].lower() == "paris"
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})}]
        final = client.chat.completions.create(model=MODEL, messages=messages, tools=[tool], temperature=0,
                                               max_tokens=40, tool_choice="none")
        assert final.choices[0].finish_reason == "stop" and "21" in final.choices[0].message.content


def test_runner_drops_the_stream_of_a_request_nobody_reads():
    runner = EngineRunner(Engine(tiny_model(), load_tokenizer("qwen2.5"), kernels="linear"))
    runner.start()

    async def submit_and_walk_away():
        runner.submit([1, 2, 3], SamplingParams(max_new_tokens=4, n=2))
        deadline = time.monotonic() + 30
        while runner.engine.has_work:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)

    try:
        asyncio.run(submit_and_walk_away())
        assert runner._streams == {} and runner._unfinished == {}
    finally:
        runner.stop()


def test_chat_page_is_served_and_its_client_streams_the_reply(server, client, tmp_path):
    url = server[0]
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no external assets: it works offline
    if shutil.which("node") is None:
        pytest.skip("no Node.js to run the page's streaming client")
    script = page.text.split("<script>")[1].split("</script>")[0]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello from the page"}], "temperature": 0,
            "max_tokens": 12}
    runner_js = tmp_path / "page.js"
    runner_js.write_text(script + f"\nstreamChat({json.dumps(url)}, {json.dumps(body)}, null, () => {{}})"
                         ".then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });\n")
    out = subprocess.run(["node", str(runner_js)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    alone = chat(client, "Hello from the page", max_tokens=12)
    assert result["text"] == alone.choices[0].message.content
    assert result["finishReason"] == "length" and result["usage"]["completion_tokens"] == 12


def test_completion_stream_joins_to_the_non_streamed_text(client):
    whole = client.completions.create(model=MODEL, prompt=["def add(a, b):", "日本語"], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=["def add(a, b):", "日本語"], max_tokens=10,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].text
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 20


def test_chat_page_in_headless_chromium_streams_the_greedy_reply(server, client):
    paths = chromium_paths()
    if paths is None:
        pytest.skip("no Chromium with chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    question = "What is the capital of France?"  # the tiny model answers in CJK: multi-byte text through the stream
    with headless_chromium(*paths) as page:
        page.get(server[0] + "/")
        WebDriverWait(page, 30).until(lambda p: p.find_element(By.ID, "model").text == MODEL)
        for field, value in (("temperature", "0"), ("max_tokens", "12")):
            page.find_element(By.ID, field).clear()
            page.find_element(By.ID, field).send_keys(value)
        # Record each text the answer shows as it grows: a streamed answer shows several.
        page.execute_script(
            "window.seen = []; new MutationObserver(() => {"
            "  const t = document.querySelector('#answer-1 .text');"
            "  if (t && t.textContent && t.textContent !== seen[seen.length - 1]) seen.push(t.textContent);"
            "}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});")
        page.find_element(By.ID, "prompt").send_keys(question, Keys.ENTER)
        WebDriverWait(page, 60).until(
            lambda p: p.find_element(By.ID, "answer-1").get_attribute("data-done") == "true")
        asked = page.find_element(By.CSS_SELECTOR, ".msg.user").text
        answer = page.find_element(By.CSS_SELECTOR, "#answer-1 .text").get_attribute("textContent")
        meta = page.find_element(By.CSS_SELECTOR, "#answer-1 .meta").text
        seen = page.execute_script("return window.seen")
    alone = chat(client, question, max_tokens=12)
    assert asked == question
    assert answer == alone.choices[0].message.content
    assert meta == "length · 12 tokens"
    assert len(seen) >= 2 and seen[-1] == answer and all(answer.startswith(t) for t in seen), seen


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantize_on_load_serves_the_quantized_models_greedy_reply(tmp_path, scheme):
    from qwen25.inference.quantize import QuantizedLinear
    from qwen25.serving.server import load_served_model

    tiny_model().save_pretrained(tmp_path / "m")
    load_tokenizer("qwen2.5").save(tmp_path / "m")
    lm, tok, _ = load_served_model(str(tmp_path / "m"), quantize=scheme)
    assert any(isinstance(m, QuantizedLinear) for m in lm.modules())
    assert lm.config.extra["quantization_config"]["quant_method"] == f"qwen25-{scheme}"
    ids = tok.encode_chat([{"role": "user", "content": "hello"}], add_generation_prompt=True)[0]
    expected = Engine(lm, tok, kernels="linear").generate([ids], SamplingParams(max_new_tokens=8))[0]
    with running_server(model=lm) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = chat(client, "hello", max_tokens=8)
    assert reply.choices[0].message.content == expected.completions[0].text
    lm.save_pretrained(tmp_path / "q")
    load_tokenizer("qwen2.5").save(tmp_path / "q")
    with pytest.raises(ValueError, match="already quantized"):
        load_served_model(str(tmp_path / "q"), quantize=scheme)
