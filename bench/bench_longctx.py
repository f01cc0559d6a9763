"""Time to first token and peak memory of long-context prefill on a small model, on this CPU.

    .venv/bin/python bench/bench_longctx.py                      # 8K, 16K, 32K, 64K; every method (minutes)
    .venv/bin/python bench/bench_longctx.py --lengths 4096 8192 --methods dense sparse     # a quick look

Methods (all on the same random weights and prompt):
  dense    one forward with PyTorch SDPA (causal), the default path
  chunked  dense attention with the prompt fed --chunk tokens per forward through the KV cache
  dca      dual chunk attention, chunk_size = the model's max_position_embeddings, local_size = 1/8 of it
  sparse   MInference vertical-slash sparse prefill (MInference's default 1000 columns / 6096 diagonals per
           head, or --sparse-patterns), threshold 0 so every length runs sparse
Each (method, length) runs in a fresh process: build the model, warm the method up on a short prompt, then
time one prefill plus the first token's argmax (best of --repeats). Peak memory is that process's resident
set high-water mark during the prefill above its level just before (Linux: the mark is reset through
/proc/self/clear_refs). "vs dense" compares the first token's logits with dense attention's: the largest
difference and whether the argmax agrees. Accuracy is measured separately, with `qwen25 eval longctx`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwen25.longctx import DualChunkConfig, SparseConfig, configure, load_patterns, prefill
from qwen25.loading import load_model
from qwen25.model import KVCache, ModelConfig, get_preset

METHODS = ("dense", "chunked", "dca", "sparse")


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def use(model, method: str, sparse: SparseConfig) -> None:
    if method == "dca":
        chunk = model.config.max_position_embeddings
        configure(model, attention="dca", dual_chunk=DualChunkConfig(chunk_size=chunk, local_size=chunk // 8))
    else:
        configure(model, attention=method, sparse=sparse if method == "sparse" else None)


@torch.inference_mode()
def first_token(model, ids: torch.Tensor, method: str, chunk: int) -> tuple[torch.Tensor, float, float]:
    """(last logits, seconds, peak MB above the level before) of one prefill."""
    cache = KVCache.for_model(model, 1, ids.shape[1] + 1)
    before = rss_mb()
    reset_peak()
    start = time.perf_counter()
    logits = prefill(model, ids, cache, chunk if method == "chunked" else None)
    logits.argmax(-1)
    seconds = time.perf_counter() - start
    return logits, seconds, rss_mb("VmHWM") - before


def one_case(args: argparse.Namespace) -> None:
    """Child process: one method at one length; prints a JSON line and saves the first-token logits."""
    model = load_model(args.model, dtype="float32").eval()
    cfg = model.config
    patterns = (load_patterns(args.sparse_patterns, cfg.num_hidden_layers, cfg.num_attention_heads)
                if args.sparse_patterns else None)
    use(model, args.one, SparseConfig(patterns, threshold=0))
    first_token(model, torch.randint(0, cfg.vocab_size, (1, 1024)), args.one, args.chunk)  # warm-up
    ids = torch.randint(0, cfg.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(args.length))
    runs = [first_token(model, ids, args.one, args.chunk) for _ in range(args.repeats)]
    torch.save(runs[0][0], args.logits_out)
    print(json.dumps({"seconds": min(r[1] for r in runs), "peak_mb": max(r[2] for r in runs)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen25-small", help="preset (random weights) or HF model directory")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--chunk", type=int, default=4096, help="tokens per forward for 'chunked'")
    ap.add_argument("--sparse-patterns", help="MInference per-head pattern JSON for 'sparse'")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # child process: a single case
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        return one_case(args)

    cfg = ModelConfig.from_file(args.model) if Path(args.model).exists() else get_preset(args.model)[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print(f"model {args.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, heads "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.kv_head_dim}, fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            reference = None
            for method in args.methods:
                out = Path(tmp) / f"{method}-{length}.pt"
                cmd = [sys.executable, __file__, "--one", method, "--length", str(length), "--logits-out", str(out),
                       "--model", args.model, "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
                if args.sparse_patterns:
                    cmd += ["--sparse-patterns", args.sparse_patterns]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                child = subprocess.run(cmd, capture_output=True, text=True)
                if child.returncode:
                    raise SystemExit(f"{method} at {length} tokens failed:\n{child.stderr}")
                result = json.loads(child.stdout.strip().splitlines()[-1])
                logits = torch.load(out)
                if method == "dense":
                    reference = logits
                agree = ("" if reference is None or method == "dense" else
                         f"max diff {float((logits - reference).abs().max()):.2e}, argmax "
                         f"{'same' if bool((logits.argmax(-1) == reference.argmax(-1)).all()) else 'differs'}")
                rows.append((length, method, result["seconds"], result["peak_mb"], agree))
                print(f"{length:6d} {method:8s} TTFT {result['seconds']:8.2f} s   peak {result['peak_mb']:8.0f} MB   "
                      f"{agree}", flush=True)

    print("\n| length | method | TTFT (s) | peak memory (MB) | vs dense |")
    print("|---|---|---|---|---|")
    for length, method, seconds, peak, agree in rows:
        print(f"| {length} | {method} | {seconds:.2f} | {peak:.0f} | {agree or '-'} |")
    timing = {(r[0], r[1]): r[2] for r in rows}
    if "dense" in args.methods and "sparse" in args.methods:
        print("\n| length | sparse speedup over dense (TTFT) |")
        print("|---|---|")
        for length in args.lengths:
            print(f"| {length} | {timing[(length, 'dense')] / timing[(length, 'sparse')]:.2f}x |")


if __name__ == "__main__":
    main()
