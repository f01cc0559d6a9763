"""Per-step metrics: a JSONL log, model FLOPs per token, the machine's measured matmul peak (for MFU) and
memory in use."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

from qwen25.data.corpus import read_jsonl
from qwen25.hardware import cpu_model
from qwen25.io import atomic_write_text


class MetricsLog:
    """Append-only JSONL, one object per record; `truncate_after(step)` drops records a resumed run redoes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return list(read_jsonl(self.path))

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 x matmul parameters a token runs through (the LM head
    included, the embedding lookup not; for MoE the activated experts) + 12 x layers x attention width x
    context (PaLM's accounting)."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.kv_head_dim, cfg.num_key_value_heads * cfg.kv_head_dim
    matmul_params = h * cfg.vocab_size
    for i in range(layers):
        matmul_params += h * (q + 2 * kv) + q * h
        if cfg.is_moe_layer(i):  # router + shared expert and its gate + the k experts a token runs through
            inter = cfg.num_experts_per_tok * cfg.moe_intermediate_size + cfg.shared_expert_intermediate_size
            matmul_params += h * (cfg.num_experts + 1) + 3 * h * inter
        else:
            matmul_params += 3 * h * cfg.intermediate_size
    return 6 * matmul_params + 12 * layers * q * seq_len


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, cache: Path | None = None) -> float:
    """Best FLOP/s of square matmuls on this device: the denominator of MFU, measured, not from a data sheet.
    Cached per device model (the CPU's model name, not only its core count: the machines here change between
    Intel and AMD), thread count, torch version and dtype."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}:{os.cpu_count()}"
    key = f"{device.type}:{name}:{torch.get_num_threads()}:{torch.__version__}:{dtype}"
    if cache and cache.is_file():
        known = json.loads(cache.read_text())
        if key in known:
            return known[key]
    n = 4096 if device.type == "cuda" else 2048  # on 2 CPU cores 1024^3 reaches only ~60% of this
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    if cache:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        known[key] = best
        atomic_write_text(cache, json.dumps(known, indent=2))  # every rank of a torchrun writes it at once
    return best


def memory_mb(device: torch.device) -> float:
    """Peak memory: allocated GPU memory on CUDA, the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
