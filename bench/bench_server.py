"""Throughput and time to first token of `qwen25 serve` under concurrent clients, against transformers' `generate`
run on the same requests one after another (what serving without a batching engine gives).

    .venv/bin/python bench/bench_server.py                              # 0.5B shape, bf16, concurrency 1 4 16 32
    .venv/bin/python bench/bench_server.py --preset qwen25-tiny --requests 8 --concurrency 1 4   # a quick check

A random model of the preset's shape (official vocabulary) is written to a temporary directory with the official
tokenizer; `qwen25 serve` runs on it as a subprocess on 127.0.0.1, and threads of the official `openai` client
send --requests chat requests of mixed prompt and output lengths (seeded), greedy, streamed, at each concurrency.
Rate = output tokens (as the server's usage counts them) / wall time. The reference sends the same prompts
through transformers' `generate` one at a time, greedy, each for the number of tokens the server produced for
it; the ratio is server tokens/s over that. Figures depend on the machine and its load: it prints both.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx2  # noqa: E402
import openai  # noqa: E402
import torch  # noqa: E402

from qwen25.hardware import cpu_model  # noqa: E402
from qwen25.model import build_model, get_preset  # noqa: E402
from qwen25.tokenizer import load_tokenizer  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def requests_for(n: int, seed: int, prompt_words: tuple[int, int], new_tokens: tuple[int, int]) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(*prompt_words))), rng.randint(*new_tokens))
            for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path | str, port: int, max_batch: int, dtype: str, kernels: str | None,
                 name: str = "bench") -> subprocess.Popen:
    env = dict(os.environ, **({"QWEN25_KERNELS": kernels} if kernels else {}))
    proc = subprocess.Popen([sys.executable, "-m", "qwen25.cli", "serve", "--model", str(model_dir), "--port", str(port),
                             "--served-model-name", name, "--max-batch", str(max_batch), "--max-queue", "1024",
                             "--dtype", dtype], env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"qwen25 serve exited with {proc.returncode}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("qwen25 serve did not come up within 10 minutes")


def one_request(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(output tokens, seconds to the first content chunk) of one streamed greedy chat request."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return tokens, first if first is not None else time.perf_counter() - start


def run_clients(port: int, reqs: list[tuple[str, int]], concurrency: int) -> tuple[list[int], float, float]:
    """(tokens per request, wall seconds, mean time to first token) with `concurrency` clients at once."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=3600)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda r: one_request(client, *r), reqs))
    wall = time.perf_counter() - start
    return [t for t, _ in results], wall, sum(f for _, f in results) / len(results)


def transformers_sequential(model_dir: Path, reqs: list[tuple[str, int]], tokens: list[int], dtype: str) -> float:
    """Seconds for transformers' greedy `generate` on each request alone, for the tokens the server produced."""
    from transformers import Qwen2ForCausalLM

    tok = load_tokenizer("qwen2.5")
    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for (prompt, _), n in zip(reqs, tokens):
            ids, _ = tok.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
            model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tok.endoftext_id)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2.5-0.5b", help="model shape (random weights)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--max-batch", type=int, default=32,
                    help="the server's --max-batch (32: all clients of the largest default concurrency run together)")
    ap.add_argument("--prompt-words", type=int, nargs=2, default=[20, 200])
    ap.add_argument("--new-tokens", type=int, nargs=2, default=[16, 64])
    ap.add_argument("--kernels", help="decode kernel mode for the server (QWEN25_KERNELS)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg, _ = get_preset(args.preset)
    tok = load_tokenizer("qwen2.5")
    if cfg.vocab_size < tok.vocab_size:
        cfg = cfg.replace(vocab_size=151936)  # the official vocabulary, so the official tokenizer fits
    reqs = requests_for(args.requests, args.seed, tuple(args.prompt_words), tuple(args.new_tokens))
    load = os.getloadavg()
    print(f"machine: {cpu_model()} ({os.cpu_count()} CPUs, {platform.machine()}), load {load[0]:.1f}; torch "
          f"{torch.__version__}; {args.preset} random weights, {args.dtype}; {args.requests} requests")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(cfg.replace(dtype=args.dtype), seed=args.seed).save_pretrained(model_dir)
        tok.save(model_dir)
        port = free_port()
        proc = start_server(model_dir, port, args.max_batch, args.dtype, args.kernels)
        rows = []
        try:
            run_clients(port, reqs[:2], 2)  # warm-up: first-use kernel choice, allocator
            for c in args.concurrency:
                tokens, wall, ttft = run_clients(port, reqs, c)
                rows.append((c, tokens, wall, ttft))
        finally:
            proc.terminate()
            proc.wait(30)
        reference = transformers_sequential(model_dir, reqs, rows[0][1], args.dtype)
    ref_rate = sum(rows[0][1]) / reference
    print(f"\ntransformers generate, requests one at a time: {sum(rows[0][1])} tokens in {reference:.1f} s = "
          f"{ref_rate:.1f} tok/s\n")
    print("| concurrency | output tokens | wall s | tok/s | mean time to first token s | x transformers sequential |")
    print("|---|---|---|---|---|---|")
    for c, tokens, wall, ttft in rows:
        rate = sum(tokens) / wall
        print(f"| {c} | {sum(tokens)} | {wall:.1f} | {rate:.1f} | {ttft:.2f} | {rate / ref_rate:.2f} |")


if __name__ == "__main__":
    main()
