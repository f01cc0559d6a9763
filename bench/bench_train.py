"""Training throughput: qwen25's train step vs transformers' Qwen2ForCausalLM on the same config, weights and
batches, in one run; tokens/s, MFU against the measured matmul peak, and the ratio.

    .venv/bin/python bench/bench_train.py                     # qwen25-tiny and qwen25-25m, bf16 autocast
    .venv/bin/python bench/bench_train.py --presets qwen25-25m --dtype float32

A step is forward + backward + gradient clipping + AdamW: for qwen25 the one trainer's own `Trainer.step` with the
causal-LM loss, for transformers the equivalent plain loop. Runs alternate between
the two libraries and the best of --repeats is kept, so a burst of outside load hits neither unevenly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from qwen25.model import build_model, get_preset, torch_dtype  # noqa: E402
from qwen25.training.distributed import DistInfo  # noqa: E402
from qwen25.training.losses import causal_lm_loss, count_target_tokens  # noqa: E402
from qwen25.training.metrics import flops_per_token, matmul_peak_flops  # noqa: E402
from qwen25.training.trainer import TrainConfig, Trainer  # noqa: E402


@dataclass
class Rows:
    input_ids: torch.Tensor
    labels: torch.Tensor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["qwen25-tiny", "qwen25-25m"])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import Qwen2Config, Qwen2ForCausalLM

    amp = torch_dtype(args.dtype) if args.dtype != "float32" else None
    peak = matmul_peak_flops(torch.device("cpu"), amp or torch.float32,
                             cache=Path.home() / ".cache" / "qwen25" / "matmul_peak.json")
    print(f"{os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}; measured matmul peak {peak / 1e9:.0f} GFLOP/s ({args.dtype})")
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_train_")  # the trainer's metrics file; nothing is checkpointed
    for preset in args.presets:
        cfg, _ = get_preset(preset)
        cfg = cfg.replace(dtype="float32")
        ours = build_model(cfg, seed=0)
        hf = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                             if k not in ("architectures", "model_type")}))
        hf.load_state_dict(ours.state_dict(), strict=False)
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g)
        n = args.batch * args.seq_len

        def hf_step():
            ctx = torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()
            with ctx:
                loss = hf(input_ids=data[:, :-1], labels=data[:, :-1]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)

        hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, foreach=True)
        trainer = Trainer(ours, TrainConfig(micro_batch=args.batch, dtype=args.dtype, parallel="none"), DistInfo(),
                          tmp, causal_lm_loss, count_target_tokens, lr=1e-4, log=lambda *a: None)
        batch = Rows(data[:, :-1], data[:, 1:])
        steps = {"qwen25": lambda: trainer.step([batch]), "transformers": hf_step}
        for step in steps.values():
            step()  # warm-up (allocations, oneDNN primitive caches)
        best = {name: float("inf") for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
        fpt = flops_per_token(cfg, args.seq_len)
        params = sum(p.numel() for p in ours.parameters())
        for name in steps:
            tps = n / best[name]
            rows.append((preset, params, name, tps, fpt * tps / peak))
            print(f"{preset:12s} {params / 1e6:5.1f}M  {name:12s} {tps:9,.0f} tokens/s  MFU {100 * fpt * tps / peak:5.1f}%",
                  flush=True)
    print("\n| config | params | qwen25 tokens/s | MFU | transformers tokens/s | MFU | ratio |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        o = next(r for r in rows if r[0] == preset and r[2] == "qwen25")
        h = next(r for r in rows if r[0] == preset and r[2] == "transformers")
        print(f"| {preset} ({args.dtype}, {args.batch}x{args.seq_len}) | {o[1] / 1e6:.1f}M | {o[3]:,.0f} | "
              f"{100 * o[4]:.1f}% | {h[3]:,.0f} | {100 * h[4]:.1f}% | {o[3] / h[3]:.2f}x |")


if __name__ == "__main__":
    main()
