"""int8 / int4 weight-only quantization of a real model: agreement, perplexity and batch-1 decode speed vs bf16.

    .venv/bin/python bench/bench_quant.py                      # qwen2.5-coder-0.5b-instruct (fetched once)
    .venv/bin/python bench/bench_quant.py --lm-heads keep int8 # also with the LM head quantized
    .venv/bin/python bench/bench_quant.py --methods gptq rtn   # also nearest-grid-point codes
    .venv/bin/python bench/bench_quant.py --skip-quality --lm-heads keep int8 --repeats 5   # speed only
    .venv/bin/python bench/bench_quant.py --schemes int8 int4 --int8-group-size 128 --group-size 32
                                                    # grouped int8, int4 in groups of 32

GPTQ's calibration (the layers' input Hessians) runs once and serves every GPTQ variant; models are quantized
in memory (`quantize_model`), which is what `qwen25 quantize` saves (the round trip is exact, tests).

Quality: greedy top-1 agreement with the bf16 model and perplexity, over --windows windows of --length tokens of
held-out text (Python's standard library source and documentation, `qwen25.inference.quant_quality`); logits
in fp32 from each model's hidden states (agreement on the models' own bf16 logits is printed beside it), with
every model computing in fp32 (only the weights differ) and in bf16 as it runs.
Speed: each model's `generate` through the engine (greedy, batch 1, no stop token; the engine measures the
quantized kernels' crossover once per machine) on a 128-token prompt; decode rate = new
tokens / (time(1 + N new tokens) - time(1 new token)), best of --repeats with the models interleaved run by
run, so bursts of outside load hit all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time

import torch

import qwen25
from qwen25.generation import SamplingParams, generate
from qwen25.inference.gptq import calibration_windows, input_hessians
from qwen25.inference.hub import resolve_model_path
from qwen25.hardware import cpu_model
from qwen25.inference.quant_quality import compare, heldout_windows, predictions
from qwen25.inference.quantize import QuantizationConfig, quantize_model
from qwen25.tokenizer import load_tokenizer


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers, a tied tensor once: what one decode step reads, near enough."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def decode_rates(models: dict[str, torch.nn.Module], prompt: list[int], new_tokens: int,
                 repeats: int) -> dict[str, tuple[float, float]]:
    """(best, median) batch-1 decode tokens/s per model, the models interleaved repeat by repeat."""
    def run(model, n):
        start = time.perf_counter()
        generate(model, [prompt], SamplingParams(max_new_tokens=n))
        return time.perf_counter() - start

    for model in models.values():
        run(model, 2)  # warm-up (and the per-machine kernel choice, measured on first use)
    first = {name: [] for name in models}
    full = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            first[name].append(run(model, 1))
            full[name].append(run(model, 1 + new_tokens))
    return {name: (new_tokens / (min(full[name]) - min(first[name])),
                   new_tokens / (statistics.median(full[name]) - statistics.median(first[name])))
            for name in models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="HF directory or fetched model name")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size")
    ap.add_argument("--int8-group-size", type=int, help="grouped int8 (default: per output channel)")
    ap.add_argument("--schemes", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    ap.add_argument("--lm-heads", nargs="+", default=["keep"], choices=["keep", "int8", "int4"],
                    help="LM head variants to run for each scheme (keep: the model's dtype)")
    ap.add_argument("--methods", nargs="+", default=["gptq"], choices=["gptq", "rtn"],
                    help="how codes are chosen (qwen25 quantize --method)")
    ap.add_argument("--skip-quality", action="store_true", help="decode speed only")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    source = resolve_model_path(args.model)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), threads {torch.get_num_threads()}, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    windows = heldout_windows(load_tokenizer(source), args.windows, max(args.length, 128))
    models = {"bf16": qwen25.from_pretrained(source).eval()}
    hessians = None
    if "gptq" in args.methods:
        start = time.perf_counter()
        hessians = input_hessians(models["bf16"], calibration_windows(load_tokenizer(source)))
        print(f"GPTQ calibration (input Hessians of every layer): {time.perf_counter() - start:.1f} s", flush=True)
    groups = {"int8": args.int8_group_size, "int4": args.group_size}
    for method, head, scheme in itertools.product(args.methods, args.lm_heads, args.schemes):
        name = (f"{scheme}{f' g{groups[scheme]}' if groups[scheme] else ''} {method}"
                + ("" if head == "keep" else f" +{head} head"))
        start = time.perf_counter()
        int8_groups = args.int8_group_size if "int8" in (scheme, head) else None
        config = QuantizationConfig(scheme, args.group_size if "int4" in (scheme, head) else None,
                                    None if head == "keep" else head, method, int8_groups)
        models[name] = quantize_model(copy.deepcopy(models["bf16"]), config, hessians).eval()
        print(f"{name}: quantized in {time.perf_counter() - start:.1f} s", flush=True)

    if not args.skip_quality:
        quality(models, windows)
    speed(models, windows[0, :128].tolist(), args.new_tokens, args.repeats)


def quality(models: dict[str, torch.nn.Module], windows: torch.Tensor) -> None:
    """Agreement with bf16 two ways: every model computing in bf16 as it runs (each forward's own rounding
    flips near-tied positions: the same weights in fp32 agree with bf16 on ~99% of positions), and every model
    computing in fp32 (`.float()` of the bf16 weights and of the quantized ones' scales: only the weights
    differ, which is what quantization changes)."""
    reference = predictions(models["bf16"], windows)
    reference_fp32 = predictions(copy.deepcopy(models["bf16"]).float(), windows)
    print(f"\nquality over {reference.top1.numel()} positions ({windows.shape[0]} windows of {windows.shape[1]} "
          f"tokens, half standard-library source, half documentation); bf16 perplexity {reference.perplexity:.4f}; "
          f"the bf16 weights computing in fp32 agree with bf16 on {100 * compare(reference, reference_fp32).agreement:.2f}%")
    print("| model | top-1 agreement, fp32 compute | top-1 agreement, bf16 compute | own-dtype logits | perplexity | change |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        if name == "bf16":
            continue
        c = compare(reference, predictions(model, windows))
        c32 = compare(reference_fp32, predictions(copy.deepcopy(model).float(), windows))
        print(f"| {name} | {100 * c32.agreement:.2f}% | {100 * c.agreement:.2f}% | {100 * c.agreement_bf16:.2f}% | "
              f"{c.perplexity:.4f} | {100 * c.perplexity_change:+.2f}% |", flush=True)


def speed(models: dict[str, torch.nn.Module], prompt: list[int], new_tokens: int, repeats: int) -> None:
    with torch.inference_mode():
        rates = decode_rates(models, prompt, new_tokens, repeats)
    print(f"\nbatch-1 greedy decode through the engine, {len(prompt)}-token prompt, {new_tokens} new tokens, best of "
          f"{repeats} (load now {os.getloadavg()[0]:.2f})")
    print("| model | weights+buffers MB | decode tok/s | median | vs bf16 |")
    print("|---|---|---|---|---|")
    for name, (best, median) in rates.items():
        print(f"| {name} | {weight_bytes(models[name]) / 1e6:.0f} | {best:.2f} | {median:.2f} | "
              f"{best / rates['bf16'][0]:.2f}x |")


if __name__ == "__main__":
    main()
