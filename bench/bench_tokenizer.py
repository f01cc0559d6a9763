"""Encoding throughput of the official Qwen2.5 tokenizer's ordinary encoder (qwen25: tiktoken's core with the
tokenizer.json's ranks and split pattern) vs tiktoken running the qwen.tiktoken ranks and the official split
pattern, on the same real text, in one run; the `tokenizers` (HF) path for reference.

    .venv/bin/python bench/bench_tokenizer.py [--repeats 11]

Single thread: one document at a time. Batch: the whole list in one call, with one thread per usable CPU in
both libraries, and again with each library's default (qwen25: one thread per usable CPU; tiktoken: 8).
The two timed encoders run back to back `--repeats` times, taking turns at going first; the table gives
medians (of the rates, and of the ratios of each back-to-back pair), which a burst of load on a shared
machine moves less than a best-of does. The CPU-time ratio is the steadier one on a busy machine (there,
8 threads also get a larger share of the cores than 2). Ids are checked equal (qwen25 = tiktoken =
tokenizers) before timing.
"""

from __future__ import annotations

import argparse
import os
import time
from statistics import median

import tiktoken

from qwen25.data import sources
from qwen25.hardware import cpu_model
from qwen25.tokenizer import CONTROL_TOKENS, PAT, load_tokenizer
from qwen25.tokenizer.fast import usable_cpus
from qwen25.tokenizer.official import find_tiktoken_file, load_tiktoken_ranks


def seconds(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time counts all of this process's threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def paired(ours, theirs, repeats: int, mb: float) -> tuple[float, float, float, float]:
    """Median MB/s of each, and median of the per-pair ratios theirs/ours by wall and by CPU time."""
    pairs = []
    for i in range(repeats):
        if i % 2:
            pairs.append((seconds(ours), seconds(theirs)))
        else:
            theirs_time = seconds(theirs)
            pairs.append((seconds(ours), theirs_time))
    return (median(mb / o[0] for o, _ in pairs), median(mb / t[0] for _, t in pairs),
            median(t[0] / o[0] for o, t in pairs), median(t[1] / o[1] for o, t in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    tok = load_tokenizer("qwen2.5")
    if tok.ordinary_backend != "tiktoken":
        raise SystemExit(f"qwen25's ordinary encoder is not on tiktoken's core: {tok.ordinary_backend}")
    enc = tiktoken.Encoding("qwen", pat_str=PAT, mergeable_ranks=load_tiktoken_ranks(find_tiktoken_file()),
                            special_tokens={t: 151643 + i for i, t in enumerate(CONTROL_TOKENS)})
    hf = tok._ordinary  # the tokenizers pipeline that encode_ordinary replaces
    docs = sources.mixed_sample(1_500_000)  # NFC already, as tiktoken (which does not normalise) needs
    mb = sum(len(d.encode()) for d in docs) / 1e6
    ours = tok.encode_batch(docs)
    assert ours == enc.encode_ordinary_batch(docs), "ids differ from tiktoken's"
    assert ours == [e.ids for e in hf.encode_batch_fast(docs, add_special_tokens=False)], "ids differ from tokenizers'"
    assert ours == [tok.encode_ordinary(d) for d in docs], "batch ids differ from one-at-a-time ids"

    print(f"{len(docs)} documents, {mb:.1f} MB (Python source, English, Chinese); ids equal (qwen25 = tiktoken = "
          f"tokenizers)")
    print(f"{cpu_model()}; {usable_cpus()} usable CPUs; load average {os.getloadavg()[0]:.2f} at start; "
          f"medians of {args.repeats} back-to-back pairs")
    n = usable_cpus()
    rows = [
        ("one thread", paired(lambda: [tok.encode_ordinary(d) for d in docs],
                              lambda: [enc.encode_ordinary(d) for d in docs], args.repeats, mb),
         seconds(lambda: [hf.encode(d, add_special_tokens=False) for d in docs])),
        (f"batch, {n} threads each", paired(lambda: tok.encode_batch(docs, num_threads=n),
                                             lambda: enc.encode_ordinary_batch(docs, num_threads=n), args.repeats, mb),
         seconds(lambda: hf.encode_batch_fast(docs, add_special_tokens=False))),
        ("batch, defaults (tiktoken: 8 threads)", paired(lambda: tok.encode_batch(docs),
                                                         lambda: enc.encode_ordinary_batch(docs), args.repeats, mb),
         None),
    ]
    print(f"load average {os.getloadavg()[0]:.2f} at end")

    print("\n| mode | qwen25 MB/s | tiktoken MB/s | qwen25 / tiktoken, wall | same, CPU time | tokenizers path MB/s "
          "(one run) |")
    print("|---|---|---|---|---|---|")
    for name, (ours, theirs, wall_ratio, cpu_ratio), hf_time in rows:
        hf_rate = f"{mb / hf_time[0]:.2f}" if hf_time else ""
        print(f"| {name} | {ours:.2f} | {theirs:.2f} | {wall_ratio:.2f}x | {cpu_ratio:.2f}x | {hf_rate} |")


if __name__ == "__main__":
    main()
