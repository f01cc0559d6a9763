"""Encoding throughput of the official Qwen2.5 tokenizer (qwen25, on HF `tokenizers`) vs tiktoken running
the same qwen.tiktoken ranks and split pattern, on the same real text, in one run.

    .venv/bin/python bench/bench_tokenizer.py

Single-thread: one document at a time. Batch: the whole list at once on each library's thread pool.
Ids are checked equal before timing.
"""

from __future__ import annotations

import os
import time

from qwen25.data import sources
from qwen25.tokenizer import CONTROL_TOKENS, PAT, load_tokenizer
from qwen25.tokenizer.official import find_tiktoken_file, load_tiktoken_ranks


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    import tiktoken

    tok = load_tokenizer("qwen2.5")
    enc = tiktoken.Encoding("qwen", pat_str=PAT, mergeable_ranks=load_tiktoken_ranks(find_tiktoken_file()),
                            special_tokens={t: 151643 + i for i, t in enumerate(CONTROL_TOKENS)})
    docs = sources.mixed_sample(1_500_000)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    assert tok.encode_batch(docs) == enc.encode_ordinary_batch(docs), "ids differ"
    print(f"{len(docs)} documents, {mb:.1f} MB (code, English, Chinese); {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}")
    rows = [
        ("one thread", best_of(lambda: [tok.encode_ordinary(d) for d in docs]),
         best_of(lambda: [enc.encode_ordinary(d) for d in docs])),
        ("batch", best_of(lambda: tok.encode_batch(docs)), best_of(lambda: enc.encode_ordinary_batch(docs))),
    ]
    print("\n| mode | qwen25 (tokenizers) MB/s | tiktoken MB/s | ratio |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {mb / ours:.2f} | {mb / theirs:.2f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
