"""MoE training throughput: forward + backward tokens/s of qwen25 vs transformers' Qwen2MoeForCausalLM, in one run.

    .venv/bin/python bench/bench_moe.py                      # fp32 and bf16 autocast, whole model and MoE block
    .venv/bin/python bench/bench_moe.py --dtypes float32 --batch 2 --seq 128 --repeats 3    # a quick check

Both libraries get the same config and the same weights (qwen25 saves an HF checkpoint, transformers loads it),
and the fp32 losses are checked to agree before anything is timed. One step is what a trainer runs:
`ce + router_aux_loss_coef * aux_loss` (transformers: `labels=` and `output_router_logits=True`), then backward.
"block" times the MoE feed-forward alone (router, dispatch, experts, shared expert) on the same hidden states,
with `sum(out * g)` as its loss. bf16 means `torch.autocast(bfloat16)` over fp32 weights, the usual
mixed-precision training setup.

Runs alternate between the two libraries (best of --repeats each), so slow phases of a shared machine hit both.
On a machine other jobs are using, `--threads 1` avoids OpenMP oversubscription (a thread that loses its core
stalls every parallel region, which swamps the difference being measured).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qwen25.model import ModelConfig, build_model  # noqa: E402


def moe_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.shared_intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096, rope_theta=1_000_000.0, dtype="float32", num_experts=args.experts,
        num_experts_per_tok=args.top_k, moe_intermediate_size=args.moe_intermediate,
        shared_expert_intermediate_size=args.shared_intermediate, norm_topk_prob=False,
    )


def ours_step(model, ids: torch.Tensor) -> torch.Tensor:
    labels = F.pad(ids[:, 1:], (0, 1), value=-100)  # shift the labels, not the logits (as transformers does)
    out = model(ids, labels=labels)  # the trainer's fused LM head + cross-entropy, and this forward's router stats
    loss = out.loss / (labels != -100).sum() + out.router.weighted_aux_loss
    loss.backward()
    return loss


def hf_step(model, ids: torch.Tensor) -> torch.Tensor:
    loss = model(ids, labels=ids, output_router_logits=True).loss
    loss.backward()
    return loss


def block_step(block, x: torch.Tensor, g: torch.Tensor) -> None:
    (block(x)[0] * g).sum().backward()


def timed_pair(fns: dict[str, callable], repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (best, median) seconds}, running the functions in alternation."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--moe-intermediate", type=int, default=256)
    ap.add_argument("--shared-intermediate", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import Qwen2MoeForCausalLM

    device = torch.device(args.device)
    cfg = moe_config(args)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, device {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print(f"config: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, heads {cfg.num_attention_heads}/"
          f"{cfg.num_key_value_heads}, vocab {cfg.vocab_size}, experts {cfg.num_experts} top-{cfg.num_experts_per_tok}"
          f", moe intermediate {cfg.moe_intermediate_size}, shared {cfg.shared_expert_intermediate_size}; "
          f"batch {args.batch} x {args.seq} tokens")

    ours = build_model(cfg, device=device, seed=0).train()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = Qwen2MoeForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device).train()
    print(f"transformers experts implementation: {hf.config._experts_implementation}")

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)
    x = torch.randn(args.batch, args.seq, cfg.hidden_size, generator=g).to(device)
    grad = torch.randn(args.batch, args.seq, cfg.hidden_size, generator=g).to(device)
    ours_block, hf_block = ours.model.layers[0].mlp, hf.model.layers[0].mlp

    a, b = ours_step(ours, ids), hf_step(hf, ids)
    assert abs(a.item() - b.item()) < 1e-4, f"fp32 losses differ: qwen25 {a.item()}, transformers {b.item()}"

    tokens = args.batch * args.seq
    rows = []
    for dt in args.dtypes:
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if dt == "bfloat16" else contextlib.nullcontext())

        def run(fn, *fn_args):
            def go():
                with amp:
                    fn(*fn_args)
                ours.zero_grad(set_to_none=True)
                hf.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            return go

        for what, fns in (("model", {"qwen25": run(ours_step, ours, ids), "transformers": run(hf_step, hf, ids)}),
                          ("block", {"qwen25": run(block_step, ours_block, x, grad),
                                     "transformers": run(block_step, hf_block, x, grad)})):
            for fn in fns.values():
                fn()  # warm-up
            res = timed_pair(fns, args.repeats)
            ours_tps, hf_tps = tokens / res["qwen25"][0], tokens / res["transformers"][0]
            rows.append((dt, what, ours_tps, hf_tps))
            print(f"{dt:9s} {what:5s}  qwen25 {ours_tps:9.0f} tok/s  transformers {hf_tps:9.0f} tok/s  "
                  f"ratio {ours_tps / hf_tps:.2f}x   (medians: {tokens / res['qwen25'][1]:.0f} / "
                  f"{tokens / res['transformers'][1]:.0f})", flush=True)

    print("\n| dtype | scope | qwen25 fwd+bwd tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|---|")
    for dt, what, o, h in rows:
        print(f"| {dt} | {what} | {o:.0f} | {h:.0f} | {o / h:.2f}x |")


if __name__ == "__main__":
    main()
