"""Inference matmul kernels chosen by measurement on the machine at hand, once, then cached.

Decoding multiplies every weight by 1-16 rows, and which PyTorch kernel streams a weight fastest for so few
rows differs between CPUs: `torch.mv` / `W @ x.T` ("weight-major") beat F.linear's GEMM path on one Intel
Sapphire Rapids and lose to it on an AMD EPYC (docs/benchmarks.md), where oneDNN's linear on a weight
reordered into its blocked layout ("onednn", what inductor's CPU prepacking uses) beats both. Whether q/k/v
and gate/up run as one packed matmul or as separate ones is the same kind of question. So nothing is assumed: at first use the
engine times every kernel, packed and separate, on this model's own weights in decode order (passes of
whole layers, so the weights come from memory as they do in a real step, never from a warm cache), for
each row-count bucket (1, 2, 3-4, 5-8, 9-16), and keeps the fastest. F.linear and packed projections win
ties (a 3% margin), being the ordinary path.

Larger matmuls (prefill, log-likelihood scoring) are one more bucket, timed at 256 rows
(`layers.PREFILL_BUCKET`) and used in inference mode only: on an AMD EPYC oneDNN's reordered weight ran
multiple-choice scoring 7-10% faster than F.linear, whose bf16 GEMM reorders the weight on every call.

Quantized layers (`qwen25.inference.quantize.QuantizedLinear`) ask another question of the same kind: up to
how many rows their packed int8/int4 kernel beats dequantizing the weight and running one matmul
(`quant_kernels.measure_kernel_rows`, per scheme, group size and shape); the answer is kept the same way.

The choice is cached in `<cache>/kernels.json` (`qwen25.io.cache_dir`), keyed by CPU model, thread count,
torch version, dtype, rows bucket (or quantization scheme) and weight shape, with the timings that decided
it. Overrides: the `QWEN25_KERNELS` environment variable or the `mode` argument, "auto" (measure or use the
cache), "linear" (F.linear and packed projections everywhere, quantized kernels for one row: no measurement)
"weight-major" (torch.mv / W @ x.T for every planned shape, packed projections; quantized layers as with
"linear") or "onednn" (oneDNN's layout for every planned shape, where PyTorch has oneDNN; likewise).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qwen25.hardware import cpu_model
from qwen25.inference.quant_kernels import measure_kernel_rows
from qwen25.inference.quantize import QuantizedLinear
from qwen25.io import atomic_write_text, cache_dir
from qwen25.model.layers import (PREFILL_BUCKET, FusedProjection, KernelPlan, kernel_plan, onednn_available,
                                 onednn_linear, set_kernel_plan, weight_major_linear)

log = logging.getLogger(__name__)

MODES = ("auto", "linear", "weight-major", "onednn")
BUCKETS = (1, 2, 4, 8, 16, PREFILL_BUCKET)
KERNELS = {"linear": F.linear, "weight-major": weight_major_linear} | (
    {"onednn": onednn_linear} if onednn_available() else {})
CACHE_VERSION = 2  # 2: oneDNN's layout among the kernels (version-1 entries never timed it)
MARGIN = 0.03  # the ordinary path (F.linear, packed) wins unless the other is this much faster
PASS_BYTES = 128 * 2**20  # layers per timing pass: at least this many weight bytes, past a CPU's caches


@dataclass
class Site:
    """A matmul of the decode step at module `path`; a packed projection has `parts` (the separate weights it
    can run as instead) and their output `sizes`."""

    path: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    parts: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None
    sizes: tuple[int, ...] = ()

    @property
    def layer(self) -> int | None:
        match = re.search(r"\.layers\.(\d+)\.", self.path)
        return int(match.group(1)) if match else None

    def plan_key(self, dtype: torch.dtype, bucket: int) -> tuple:
        """A packed projection's key in `KernelPlan.unfused` (as `FusedProjection.plan_key` makes it)."""
        return (dtype, bucket, self.sizes, self.weight.shape[1])


def machine() -> str:
    """CPU model, thread count and torch version: what a kernel choice depends on."""
    return f"{cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def key_text(key: tuple) -> str:
    """A plan key as the cache file writes it, with the machine in front."""
    dtype, bucket, a, b = key
    what = f"packed={'+'.join(map(str, a))}x{b}" if isinstance(a, tuple) else f"shape={a}x{b}"
    return f"{machine()}|{str(dtype).removeprefix('torch.')}|rows={bucket}|{what}"


def decode_sites(model: nn.Module, max_bytes: int = PASS_BYTES) -> list[Site]:
    """The model's decode matmuls in forward order: those of as many leading layers as make `max_bytes` of
    weights (every layer of a small model), then those outside the layers (the LM head). Packs the
    projections as decoding would."""
    found: list[Site] = []
    fused: set[int] = set()
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, FusedProjection):
                value.ensure_packed()
                fused |= {id(lin) for lin in value.linears}
                found.append(Site(f"{name}.{attr}", value.weight, value.bias,
                                  [(lin.weight, lin.bias) for lin in value.linears], tuple(value.sizes)))
        if isinstance(module, nn.Linear) and id(module) not in fused:
            found.append(Site(name, module.weight, module.bias))
    layers = sorted({s.layer for s in found if s.layer is not None})
    kept, total = set(), 0
    for layer in layers:
        if total >= max_bytes:
            break
        kept.add(layer)
        total += sum(s.weight.numel() * s.weight.element_size() for s in found if s.layer == layer)
    return [s for s in found if s.layer in kept] + [s for s in found if s.layer is None]


def _all_keys(sites: list[Site], dtype: torch.dtype, bucket: int) -> tuple[set[tuple], set[tuple]]:
    """(weight shape keys, packed projection keys) a decode step of these sites looks up for one bucket."""
    shapes, packed = set(), set()
    for site in sites:
        shapes.add(_shape_key(dtype, bucket, site.weight))
        if site.parts is not None:
            packed.add(site.plan_key(dtype, bucket))
            shapes |= {_shape_key(dtype, bucket, w) for w, _ in site.parts}
    return shapes, packed


def _shape_key(dtype: torch.dtype, bucket: int, weight: torch.Tensor) -> tuple:
    return (dtype, bucket, *weight.shape)


def measure_bucket(sites: list[Site], bucket: int, repeats: int = 5) -> dict[tuple, dict]:
    """Time both kernels, packed and separate, on `bucket` rows; returns {plan key: {"choice", "seconds"}}.

    Each timing pass runs every site in decode order with one kernel and one variant (packed or separate
    projections), timing each call. A call's figure is its best over the passes (the machine's own speed,
    not a burst of another process's load); a shape's figure sums its calls."""
    dtype = sites[0].weight.dtype
    inputs = {d: torch.randn(bucket, d).to(dtype) for d in {s.weight.shape[1] for s in sites}}
    best: dict[tuple, float] = {}  # (site index, part: None plain / -1 packed / i separate, kernel) -> seconds
    with torch.inference_mode():
        for _ in range(repeats):
            for kernel, fn in KERNELS.items():
                for variant in ("packed", "separate"):
                    for n, site in enumerate(sites):
                        x = inputs[site.weight.shape[1]]
                        calls = ([(None if site.parts is None else -1, site.weight, site.bias)]
                                 if site.parts is None or variant == "packed"
                                 else [(i, w, b) for i, (w, b) in enumerate(site.parts)])
                        for part, w, b in calls:
                            start = time.perf_counter()
                            fn(x, w, b)
                            seconds = time.perf_counter() - start
                            best[(n, part, kernel)] = min(best.get((n, part, kernel), float("inf")), seconds)
    shape_seconds: dict[tuple, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KERNELS, 0.0))
    for (n, part, kernel), seconds in best.items():
        site = sites[n]
        w = site.weight if part is None or part == -1 else site.parts[part][0]
        shape_seconds[_shape_key(dtype, bucket, w)][kernel] += seconds
    decisions = {key: {"choice": _fastest("linear", seconds), "seconds": seconds}
                 for key, seconds in shape_seconds.items()}
    kernel_of = {key: d["choice"] for key, d in decisions.items()}
    grouped: dict[tuple, dict[str, float]] = defaultdict(lambda: {"packed": 0.0, "separate": 0.0})
    for n, site in enumerate(sites):
        if site.parts is None:
            continue
        seconds = grouped[site.plan_key(dtype, bucket)]
        seconds["packed"] += best[(n, -1, kernel_of[_shape_key(dtype, bucket, site.weight)])]
        seconds["separate"] += sum(best[(n, i, kernel_of[_shape_key(dtype, bucket, w)])]
                                   for i, (w, _) in enumerate(site.parts))
    for key, seconds in grouped.items():
        decisions[key] = {"choice": _fastest("packed", seconds), "seconds": seconds}
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {key: {**d, "load": load} for key, d in decisions.items()}


def _fastest(ordinary: str, seconds: dict[str, float]) -> str:
    """The fastest option, unless it beats the ordinary one by less than MARGIN."""
    best = min(seconds, key=seconds.get)
    return best if seconds[best] < (1 - MARGIN) * seconds[ordinary] else ordinary


def cache_file() -> Path:
    return cache_dir() / "kernels.json"


def read_cache() -> dict[str, dict]:
    path = cache_file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return data.get("entries", {}) if data.get("version") == CACHE_VERSION else {}  # older: measured again
    except (json.JSONDecodeError, AttributeError):
        log.warning("%s: not a kernel cache (unreadable JSON); measuring again", path)
        return {}


def write_cache(entries: dict[str, dict]) -> None:
    merged = read_cache() | entries  # another process may have added its own model's shapes meanwhile
    atomic_write_text(cache_file(),
                      json.dumps({"version": CACHE_VERSION, "entries": merged}, indent=1, sort_keys=True) + "\n")


def measured_decisions(model: nn.Module, remeasure: bool = False) -> dict[tuple, dict]:
    """{plan key: {"choice", "seconds"}} for this model's decode shapes on this machine: from the cache, or
    measured now (and cached) for the buckets the cache lacks."""
    sites = decode_sites(model)
    if not sites:  # every matmul quantized (`quantized_decisions` has those)
        return {}
    dtype = sites[0].weight.dtype
    cached = {} if remeasure else read_cache()
    decisions: dict[tuple, dict] = {}
    new: dict[str, dict] = {}
    for bucket in BUCKETS:
        shapes, packed = _all_keys(sites, dtype, bucket)
        keys = shapes | packed
        if all(key_text(k) in cached for k in keys):
            decisions |= {k: cached[key_text(k)] for k in keys}
            continue
        if not new:
            # a warning, so the pause is explained: it happens once per machine and model shape
            log.warning("qwen25: measuring the matmul kernels for this machine and model shape (once, "
                        "cached in %s; QWEN25_KERNELS=linear skips it)", cache_file())
        measured = measure_bucket(sites, bucket)
        decisions |= measured
        new |= {key_text(k): v for k, v in measured.items()}
    if new:
        write_cache(new)
    return decisions


def install_kernels(model: nn.Module, mode: str | None = None) -> KernelPlan:
    """Choose this model's decode kernels (see the module docstring for `mode`) and install them in the
    process-wide plan, keeping other models' entries. Models off the CPU keep the plan as it is."""
    mode = mode or os.environ.get("QWEN25_KERNELS") or "auto"
    if mode not in MODES:
        raise ValueError(f"kernels mode (QWEN25_KERNELS or kernels=) must be one of {', '.join(MODES)}, got {mode!r}")
    plan = kernel_plan()
    if next(model.parameters()).device.type != "cpu":
        return plan
    install_quantized_kernels(model, mode)
    sites = decode_sites(model)
    if not sites:
        return plan
    dtype = sites[0].weight.dtype
    shapes, packed = set(), set()
    for bucket in BUCKETS:
        s, p = _all_keys(sites, dtype, bucket)
        shapes, packed = shapes | s, packed | p
    if mode == "onednn" and "onednn" not in KERNELS:
        raise ValueError("kernels mode onednn: this PyTorch build has no oneDNN (torch.backends.mkldnn)")
    weight_major, onednn, unfused = set(), set(), set()
    if mode == "weight-major":
        weight_major = shapes
    elif mode == "onednn":
        onednn = shapes
    elif mode == "auto":
        decisions = measured_decisions(model)
        weight_major = {k for k in shapes if decisions[k]["choice"] == "weight-major"}
        onednn = {k for k in shapes if decisions[k]["choice"] == "onednn"}
        unfused = {k for k in packed if decisions[k]["choice"] == "separate"}
    plan = KernelPlan(weight_major=frozenset((plan.weight_major - shapes) | weight_major),
                      unfused=frozenset((plan.unfused - packed) | unfused),
                      onednn=frozenset((plan.onednn - shapes) | onednn))
    set_kernel_plan(plan)
    return plan


def quantized_layers(model: nn.Module) -> list[QuantizedLinear]:
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


def quantized_key(layer: QuantizedLinear) -> str:
    """A quantized layer's cache key: machine, dtype, scheme, group size and shape."""
    dtype = str(layer.scales.dtype).removeprefix("torch.")
    return (f"{machine()}|{dtype}|quant={layer.scheme}|g={layer.group_size or 0}|"
            f"shape={layer.out_features}x{layer.in_features}")


def quantized_decisions(model: nn.Module, remeasure: bool = False) -> dict[str, dict]:
    """{cache key: {"rows", "seconds", "load"}} for this model's quantized layer shapes on this machine: up to
    how many rows of input the packed kernel is used; from the cache, or measured now (about a second per
    shape) and cached."""
    cached = {} if remeasure else read_cache()
    decisions: dict[str, dict] = {}
    new: dict[str, dict] = {}
    for layer in quantized_layers(model):
        key = quantized_key(layer)
        if key in decisions:
            continue
        if key in cached and isinstance(cached[key].get("rows"), int):
            decisions[key] = cached[key]
            continue
        if not new:
            log.warning("qwen25: measuring the quantized kernels for this machine and model shape (once, cached "
                        "in %s; QWEN25_KERNELS=linear skips it)", cache_file())
        measured = measure_kernel_rows(layer.scheme, layer.out_features, layer.in_features, layer.group_size,
                                       layer.scales.dtype)
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        decisions[key] = new[key] = {**measured, "load": load}
    if new:
        write_cache(new)
    return decisions


def install_quantized_kernels(model: nn.Module, mode: str) -> None:
    """Set each quantized layer's `packed_rows`: measured ("auto") or 1 (the other modes: no measurement)."""
    layers = quantized_layers(model)
    decisions = quantized_decisions(model) if mode == "auto" and layers else {}
    for layer in layers:
        layer.packed_rows = decisions[quantized_key(layer)]["rows"] if decisions else 1


def quantized_table(decisions: dict[str, dict]) -> str:
    """The quantized layers' crossovers as a markdown table (empty for a model without them)."""
    if not decisions:
        return ""
    lines = ["| quantized layer | packed kernel up to rows | ms per rows: packed / dequantized | load at measurement |",
             "|---|---|---|---|"]
    for key, d in sorted(decisions.items()):
        what = key.removeprefix(machine() + "|")
        ms = ", ".join(f"{rows}: {1e3 * s[0]:.2f} / {1e3 * s[1]:.2f}" for rows, s in d["seconds"].items())
        lines.append(f"| {what} | {d['rows']} | {ms} | {d.get('load', '')} |")
    return "\n".join(lines)


def decision_table(decisions: dict[tuple, dict]) -> str:
    """The choices as a markdown table: rows bucket, weight shape (or packed projection), choice, timings."""
    lines = [f"machine: {machine()}",
             f"| rows | weight | choice | ms: {' / '.join(KERNELS)} (packed / separate) | load at measurement |",
             "|---|---|---|---|---|"]
    for key, d in sorted(decisions.items(), key=lambda kv: (kv[0][1], isinstance(kv[0][2], tuple), kv[0][2:])):
        _, bucket, a, b = key
        what = f"packed {'+'.join(map(str, a))} x {b}" if isinstance(a, tuple) else f"{a} x {b}"
        ms = " / ".join(f"{1e3 * v:.2f}" for v in d["seconds"].values())
        lines.append(f"| {bucket} | {what} | {d['choice']} | {ms} | {d.get('load', '')} |")
    return "\n".join(lines)
