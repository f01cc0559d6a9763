"""SFT step throughput: qwen25's trainer vs TRL's SFTTrainer on the same model, conversations and packing, bf16
autocast, in one run.

    .venv/bin/python bench/bench_sft.py                       # qwen25-tiny shape, then the 25M shape
    .venv/bin/python bench/bench_sft.py --presets qwen25-25m --steps 4

Data: conversations from qwen25/posttraining/offline_data.py (worked math, standard-library code, calculator
tool calls), packed by qwen25's packer into rows of --seq-len tokens; one optimizer step = --rows rows. TRL gets
exactly the same conversations per step in its own packed form (padding-free: the step's conversations in one
sequence with restarting position_ids, which transformers turns into a block-diagonal mask), so both libraries
see the same tokens and train on the same assistant targets. A step is forward + backward + clipping + AdamW:
qwen25 through `Trainer.step`, TRL through `SFTTrainer.training_step` plus its optimizer. The loss of the first
step is printed for both as a check that they compute the same thing. Tokens/s counts real tokens (padding not
included). Runs alternate between the libraries; the best of --repeats is kept.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from qwen25.hardware import cpu_model  # noqa: E402
from qwen25.model import build_model, get_preset  # noqa: E402
from qwen25.posttraining.conversations import encode_conversation, normalise_messages  # noqa: E402
from qwen25.posttraining.offline_data import (  # noqa: E402
    code_conversation,
    math_conversation,
    math_problem,
    stdlib_functions,
    tool_conversation,
)
from qwen25.posttraining.packing import pack, plan_rows  # noqa: E402
from qwen25.tokenizer import load_tokenizer  # noqa: E402
from qwen25.training.distributed import DistInfo  # noqa: E402
from qwen25.training.losses import causal_lm_loss, count_target_tokens  # noqa: E402
from qwen25.training.trainer import TrainConfig, Trainer  # noqa: E402



def conversations(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    functions = []
    for item in stdlib_functions():
        functions.append(item)
        if len(functions) >= n // 4:
            break
    out = [math_conversation(*math_problem(rng)) for _ in range(n // 2)]
    out += [tool_conversation(rng) for _ in range(n // 4)]
    out += [code_conversation(*f) for f in functions]
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["qwen25-tiny", "qwen25-25m"])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=8, help="packed rows per optimizer step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = load_tokenizer("qwen2.5")
    hf_tok = AutoTokenizer.from_pretrained(tok.path)
    convs = conversations(4000, seed=0)
    examples = [encode_conversation(tok, normalise_messages(c["messages"], f"c{i}"), c.get("tools"), f"c{i}")
                for i, c in enumerate(convs)]
    plan = plan_rows([len(e) for e in examples], args.seq_len, range(len(examples)))
    steps_data = [plan[i:i + args.rows] for i in range(0, len(plan) - args.rows + 1, args.rows)]
    needed = (1 + args.repeats * args.steps)
    if len(steps_data) < needed:
        raise SystemExit(f"only {len(steps_data)} steps of data; lower --rows/--seq-len or --steps/--repeats")
    print(f"{cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}; {len(examples)} conversations, {len(plan)} rows of {args.seq_len}")
    results = []
    for preset in args.presets:
        cfg, _ = get_preset(preset)
        cfg = cfg.replace(dtype="float32", vocab_size=151936, tie_word_embeddings=True)
        ours = build_model(cfg, seed=0)
        hf = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                             if k not in ("architectures", "model_type")}))
        hf.load_state_dict(ours.state_dict(), strict=False)
        hf.tie_weights()
        tmp = tempfile.mkdtemp(prefix="bench_sft_")
        trainer = Trainer(ours, TrainConfig(micro_batch=args.rows, dtype="bfloat16", parallel="none"), DistInfo(),
                          tmp, causal_lm_loss, count_target_tokens, lr=1e-4, log=lambda *a: None)
        rows_for_trl = [{"input_ids": e.ids.tolist(),
                         "labels": [-100] + [int(e.ids[t + 1]) if e.target[t] else -100 for t in range(len(e) - 1)]}
                        for e in examples]
        sft_args = SFTConfig(output_dir=tmp, bf16=True, use_cpu=True, report_to=[], padding_free=True,
                             per_device_train_batch_size=2, learning_rate=1e-4, max_grad_norm=1.0, max_length=None,
                             dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
        trl = SFTTrainer(model=hf, args=sft_args, train_dataset=Dataset.from_list(rows_for_trl[:8]),
                         processing_class=hf_tok)
        trl.create_optimizer_and_scheduler(num_training_steps=10**6)
        cursor = {"qwen25": 0, "trl": 0}

        def step_batches(name: str):
            rows = steps_data[cursor[name] % len(steps_data)]
            cursor[name] += 1
            return rows

        def ours_step() -> tuple[float, int]:
            rows = step_batches("qwen25")
            batch = pack(examples, rows, args.seq_len, tok.pad_id)
            result = trainer.step([batch])
            return result["loss"], sum(len(examples[i]) for row in rows for i in row)

        def trl_step() -> tuple[float, int]:
            rows = step_batches("trl")
            inputs = trl.data_collator([rows_for_trl[i] for row in rows for i in row])
            n_items = int((inputs["labels"][:, 1:] != -100).sum())
            hf.train()
            loss = trl.training_step(hf, inputs, num_items_in_batch=torch.tensor(n_items))
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            trl.optimizer.step()
            trl.optimizer.zero_grad(set_to_none=True)
            return float(loss), int(inputs["input_ids"].numel())

        first = {"qwen25": ours_step(), "trl": trl_step()}  # warm-up, and the same first batch for both
        print(f"{preset}: first-step loss qwen25 {first['qwen25'][0]:.5f}, TRL {first['trl'][0]:.5f} "
              f"(same weights and tokens; bf16 autocast)")
        best = {"qwen25": float("inf"), "trl": float("inf")}
        tokens = {}
        for _ in range(args.repeats):
            for name, fn in (("qwen25", ours_step), ("trl", trl_step)):
                t = time.perf_counter()
                n = sum(fn()[1] for _ in range(args.steps))
                dt = time.perf_counter() - t
                if dt / n < best[name]:
                    best[name], tokens[name] = dt / n, n
        params = sum(p.numel() for p in ours.parameters())
        results.append((preset, params, 1 / best["qwen25"], 1 / best["trl"]))
        print(f"{preset}: qwen25 {1 / best['qwen25']:,.0f} tokens/s, TRL {1 / best['trl']:,.0f} tokens/s, "
              f"{best['trl'] / best['qwen25']:.2f}x", flush=True)
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")
    print("\n| config | params | qwen25 tokens/s | TRL SFTTrainer tokens/s | ratio |")
    print("|---|---|---|---|---|")
    for preset, params, ours_tps, trl_tps in results:
        print(f"| {preset} (bf16 autocast, {args.rows}x{args.seq_len} packed) | {params / 1e6:.1f}M | {ours_tps:,.0f} | "
              f"{trl_tps:,.0f} | {ours_tps / trl_tps:.2f}x |")


if __name__ == "__main__":
    main()
