"""Prefill and decode throughput of qwen25 vs transformers on a 0.5B-shaped random model, and a serving
figure, in one run.

    .venv/bin/python bench/bench_inference.py            # bf16: batch 1 and 8, then serving
    .venv/bin/python bench/bench_inference.py --dtypes bfloat16 float32 --batches 1 --serving-requests 0

Serving: 16 requests of mixed prompt and output lengths (seeded), greedy, no stop token. qwen25 runs them
through the engine (continuous batching, at most --serving-batch sequences at once); transformers runs its
`generate` on static batches of --serving-batch of the same requests in the same order, left-padded, each
batch decoding until its longest request is done. Rate = the requests' own output tokens / wall time.

Figures are from the best of --repeats runs, the two libraries interleaved run by run (medians printed too). Both libraries get the same weights and go through their own `generate` (greedy, no stop token), so the
figures include each one's per-step overhead. Prefill rate = prompt tokens / time to first token; decode rate
= new tokens / (time(1 + N new tokens) - time(1 new token)). Also prints the DRAM read bandwidth and the
batch-1 decode cap it implies (every weight byte read once per token).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from qwen25.generation import SamplingParams  # noqa: E402
from qwen25.inference.engine import Engine  # noqa: E402
from qwen25.hardware import cpu_model  # noqa: E402
from qwen25.inference.kernels import decision_table, install_kernels, measured_decisions  # noqa: E402
from qwen25.model import build_model, get_preset  # noqa: E402
from qwen25.model import torch_dtype  # noqa: E402


def dram_read_gbps(repeats: int = 8) -> float:
    """The best streaming read of 1 GiB (far larger than any cache) this process achieves: the faster of a sum
    over fp32 and a bf16 GEMV (what batch-1 decode does). Shared VMs vary by tens of percent from minute to
    minute, so the bench measures this at its start and end and uses the higher figure."""
    data = torch.randn(2**28)
    matrix = torch.randn(2**15, 2**14).to(torch.bfloat16)
    vector = torch.randn(2**14).to(torch.bfloat16)
    best = 0.0
    for _ in range(repeats):
        for work, nbytes in ((lambda: data.sum(), 2**30), (lambda: torch.mv(matrix, vector), 2**30)):
            t = time.perf_counter()
            work()
            best = max(best, nbytes / (time.perf_counter() - t) / 1e9)
    return best


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall time. Shared VMs add bursts of outside load; the best run is the machine's own speed."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serving-requests", type=int, default=16, help="0: skip the serving figure")
    ap.add_argument("--serving-batch", type=int, default=8)
    ap.add_argument("--serving-repeats", type=int, default=2)
    ap.add_argument("--kernels", help="decode kernel mode (QWEN25_KERNELS: auto, linear, weight-major)")
    ap.add_argument("--preset", default="qwen2.5-0.5b", help="model shape (random weights)")
    ap.add_argument("--remeasure-kernels", action="store_true",
                    help="measure the decode kernels again instead of using this machine's cached choice")
    args = ap.parse_args()

    from transformers import Qwen2Config, Qwen2ForCausalLM

    print(f"machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    bandwidth_start = dram_read_gbps()
    cfg, _ = get_preset(args.preset)
    ours32 = build_model(cfg.replace(dtype="float32"), seed=0).eval()
    hf_cfg = Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")})
    hf32 = Qwen2ForCausalLM(hf_cfg).eval()
    hf32.load_state_dict(ours32.state_dict(), strict=False)
    n_bytes = {dt: sum(p.numel() for p in ours32.parameters()) * torch_dtype(dt).itemsize for dt in args.dtypes}

    g = torch.Generator().manual_seed(0)
    rows = []
    serving = []
    for dt in args.dtypes:
        dtype = torch_dtype(dt)
        ours = ours32.to(dtype) if dtype != torch.float32 else ours32
        hf = hf32.to(dtype) if dtype != torch.float32 else hf32
        with torch.inference_mode():
            started = time.perf_counter()
            if args.remeasure_kernels:
                measured_decisions(ours, remeasure=True)
            install_kernels(ours, args.kernels)
            print(f"{dt}: decode kernels ready in {time.perf_counter() - started:.1f} s")
            print(kernel_table(ours, args.kernels))
        for batch in args.batches:
            prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g)
            plist = prompts.tolist()

            def ours_run(n):
                return lambda: Engine(ours, max_batch=batch, prefill_chunk=None, kernels=args.kernels).generate(
                    plist, SamplingParams(max_new_tokens=n))

            def hf_run(n):
                kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
                return lambda: hf.generate(prompts, attention_mask=torch.ones_like(prompts), **kw)

            with torch.inference_mode():
                runs = {"qwen25": ours_run, "transformers": hf_run}
                for run in runs.values():
                    run(2)()  # warm-up
                # interleave the two libraries repeat by repeat, so bursts of outside load hit both alike
                first = {name: [] for name in runs}
                full = {name: [] for name in runs}
                for _ in range(args.repeats):
                    for name, run in runs.items():
                        first[name].append(timed(run(1), 1)[0])
                        full[name].append(timed(run(1 + args.new_tokens), 1)[0])
                for name in runs:
                    prefill = batch * args.prompt_len / min(first[name])
                    decode = batch * args.new_tokens / (min(full[name]) - min(first[name]))
                    decode_med = batch * args.new_tokens / (statistics.median(full[name]) - statistics.median(first[name]))
                    rows.append((dt, batch, name, prefill, decode))
                    print(f"{dt:9s} batch {batch}  {name:12s}  prefill {prefill:8.1f} tok/s   decode {decode:7.2f} tok/s"
                          f"  (medians: prefill {batch * args.prompt_len / statistics.median(first[name]):.1f}, "
                          f"decode {decode_med:.2f})", flush=True)
        if args.serving_requests and dt == args.dtypes[0]:
            serving.append((dt, *serve(ours, hf, args)))
        ours32 = ours.float()
        hf32 = hf.float()

    bw = max(bandwidth_start, dram_read_gbps())
    print(f"\nstreaming read bandwidth: {bw:.1f} GB/s (best of start and end of the run)")
    for dt in args.dtypes:
        cap = bw * 1e9 / n_bytes[dt]
        got = next(r[4] for r in rows if r[:3] == (dt, 1, "qwen25")) if 1 in args.batches else float("nan")
        print(f"  {dt}: weights {n_bytes[dt] / 1e9:.2f} GB -> batch-1 decode cap {cap:.1f} tokens/s; "
              f"qwen25 reaches {got:.2f} ({100 * got / cap:.0f}% of the cap)")

    print("\n| dtype | batch | prefill tok/s qwen25 | transformers | ratio | decode tok/s qwen25 | transformers | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for dt in args.dtypes:
        for batch in args.batches:
            o = next(r for r in rows if r[:3] == (dt, batch, "qwen25"))
            h = next(r for r in rows if r[:3] == (dt, batch, "transformers"))
            print(f"| {dt} | {batch} | {o[3]:.1f} | {h[3]:.1f} | {o[3] / h[3]:.2f}x | {o[4]:.2f} | {h[4]:.2f} | "
                  f"{o[4] / h[4]:.2f}x |")
    if serving:
        print(f"\n| dtype | requests | batch | output tokens | qwen25 engine tok/s | transformers static batches tok/s "
              f"| ratio |")
        print("|---|---|---|---|---|---|---|")
        for dt, tokens, ours_rate, hf_rate in serving:
            print(f"| {dt} | {args.serving_requests} | {args.serving_batch} | {tokens} | {ours_rate:.2f} | "
                  f"{hf_rate:.2f} | {ours_rate / hf_rate:.2f}x |")
    print(f"\nCPU: {cpu_model()}; load average at the end {os.getloadavg()[0]:.2f}")


def kernel_table(model, mode: str | None) -> str:
    """The kernel choices this run uses (measured on this machine, or read from the per-machine cache)."""
    mode = mode or os.environ.get("QWEN25_KERNELS") or "auto"
    return decision_table(measured_decisions(model)) if mode == "auto" else f"kernels forced: {mode}"


def serving_requests(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt length, output length) pairs, log-uniform in 16-512 and 8-160: a mix of short and long."""
    g = torch.Generator().manual_seed(seed)
    prompt = (16 * 32 ** torch.rand(n, generator=g)).long().tolist()
    output = (8 * 20 ** torch.rand(n, generator=g)).long().tolist()
    return list(zip(prompt, output))


def serve(ours, hf, args) -> tuple[int, float, float]:
    """(output tokens, qwen25 engine tokens/s, transformers static-batch tokens/s), best of the repeats."""
    shapes = serving_requests(args.serving_requests)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, ours.config.vocab_size, (p,), generator=g).tolist() for p, _ in shapes]
    params = [SamplingParams(max_new_tokens=o) for _, o in shapes]
    total = sum(o for _, o in shapes)
    print(f"\nserving: {len(shapes)} requests, prompts {sorted(p for p, _ in shapes)}, "
          f"outputs {sorted(o for _, o in shapes)} ({total} tokens)", flush=True)

    def ours_run():
        engine = Engine(ours, max_batch=args.serving_batch, kernels=args.kernels)
        return [o.completions[0].token_ids for o in engine.generate(prompts, params)]

    def hf_run():
        out = []
        for start in range(0, len(prompts), args.serving_batch):
            batch = prompts[start:start + args.serving_batch]
            wanted = [p.max_new_tokens for p in params[start:start + args.serving_batch]]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            new = hf.generate(ids, attention_mask=mask, max_new_tokens=max(wanted), min_new_tokens=max(wanted),
                              do_sample=False, eos_token_id=None, pad_token_id=0)[:, width:]
            out += [row[:n].tolist() for row, n in zip(new, wanted)]
        return out

    best = {"qwen25": float("inf"), "transformers": float("inf")}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.serving_repeats):
            for name, run in (("qwen25", ours_run), ("transformers", hf_run)):
                started = time.perf_counter()
                outputs[name] = run()
                best[name] = min(best[name], time.perf_counter() - started)
                print(f"  {name}: {total / best[name]:.2f} tok/s (best so far; load {os.getloadavg()[0]:.2f})",
                      flush=True)
    same = sum(a == b for a, b in zip(outputs["qwen25"], outputs["transformers"]))
    print(f"  identical outputs: {same}/{len(prompts)} requests (bf16 rounding differs between the libraries)")
    return total, total / best["qwen25"], total / best["transformers"]


if __name__ == "__main__":
    main()
