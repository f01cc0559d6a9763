"""GRPO and DPO throughput: one GRPO step split into rollout, scoring and training time; rollout tokens/s of
qwen25's rollouts against TRL's GRPOTrainer generation (transformers `generate`, use_vllm off); and DPO step
tokens/s against TRL's DPOTrainer, on the same model, prompts and pairs, in one run.

    .venv/bin/python bench/bench_grpo.py                     # qwen25-tiny shape with the official vocabulary
    .venv/bin/python bench/bench_grpo.py --preset qwen25-25m --queries 8 --group-size 8 --max-new-tokens 64

The model is a random one of the preset's shape (vocabulary 151,936, tied embeddings), loaded into both
libraries from one HF directory. A random model almost never samples <|im_end|>, so every row runs to
--max-new-tokens in both libraries and both generate the same number of tokens; tokens/s counts completion tokens
up to and including the first stop token. Rollouts: --queries prompts (two-digit arithmetic questions in the chat
format) x --group-size samples, temperature 1. qwen25 rolls out through `EngineRollouts` (the inference engine:
each prompt one request of n = G samples sharing one prefill, with per-token log-probs); TRL through
`GRPOTrainer._generate_single_turn` (transformers generate on the same left-padded prompts). The GRPO step is qwen25's: `GRPOSource` (rollout, verifier rewards, advantages) then
`Trainer.step` (forward, backward, clipping, AdamW). DPO: --pairs pairs per step (correct vs corrupted worked
answers), forward + backward + AdamW with reference log-probs precomputed in both libraries; tokens/s counts real
(unpadded) tokens of the chosen and rejected sequences. Runs alternate between the libraries; the best of
--repeats is kept. fp32 throughout (TRL with bf16=False).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from qwen25.inference.sampling import SamplingParams  # noqa: E402
from qwen25.model import build_model, from_pretrained, get_preset  # noqa: E402
from qwen25.posttraining.alignment_data import math_query, synthetic_pair, two_digit_arithmetic  # noqa: E402
from qwen25.posttraining.dpo import count_pairs, make_dpo_loss, sequence_logps  # noqa: E402
from qwen25.posttraining.grpo import GRPORecipe, GRPOSource, make_grpo_loss, units_counter  # noqa: E402
from qwen25.posttraining.pairs import collate_pairs, load_pairs  # noqa: E402
from qwen25.posttraining.rewards import VerifierReward  # noqa: E402
from qwen25.posttraining.rollouts import EngineRollouts  # noqa: E402
from qwen25.tokenizer import load_tokenizer  # noqa: E402
from qwen25.training.distributed import DistInfo  # noqa: E402
from qwen25.training.trainer import TrainConfig, Trainer  # noqa: E402

from qwen25.hardware import cpu_model  # noqa: E402


def save_random_model(preset: str, directory: Path) -> Path:
    cfg, _ = get_preset(preset)
    cfg = cfg.replace(dtype="float32", vocab_size=151936, tie_word_embeddings=True)
    model = build_model(cfg, seed=0)
    model.save_pretrained(directory)
    load_tokenizer("qwen2.5").save(directory)
    return directory


def completion_tokens(rows, stop: set[int]) -> int:
    total = 0
    for row in rows:
        n = len(row)
        for i, t in enumerate(row):
            if t in stop:
                n = i + 1
                break
        total += n
    return total


def bench_rollouts(args, path: Path, tok, prompts: list[list[int]]) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    stop = [tok.control_ids["<|im_end|>"], tok.endoftext_id]
    ours = EngineRollouts(from_pretrained(path, dtype=torch.float32), max_rows=args.queries * args.group_size)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, stop_token_ids=stop)
    config = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_grpo_"), bf16=False, use_cpu=True, report_to=[],
                        beta=0.0, num_generations=args.group_size, max_completion_length=args.max_new_tokens,
                        per_device_train_batch_size=args.group_size, temperature=1.0, use_vllm=False)
    trl = GRPOTrainer(model=str(path), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                      args=config, train_dataset=Dataset.from_list([{"prompt": "x"}] * args.group_size))
    repeated = [p for p in prompts for _ in range(args.group_size)]

    def ours_run() -> int:
        return completion_tokens(ours(prompts, args.group_size, params, seed=0).completions, set(stop))

    def trl_run() -> int:
        completions, _ = trl._generate_single_turn(repeated, None, {}, args.group_size)
        return sum(len(c) for c in completions)

    best = {"qwen25": 0.0, "trl": 0.0}
    for _ in range(args.repeats):
        for name, fn in (("qwen25", ours_run), ("trl", trl_run)):
            t = time.perf_counter()
            n = fn()
            best[name] = max(best[name], n / (time.perf_counter() - t))
    return best


def grpo_step_split(args, path: Path, tok, queries) -> dict:
    recipe = GRPORecipe(queries=["-"], seed=0, aggregation="token_mean", beta=0.0, kl_metrics=False)
    recipe.rollout.group_size, recipe.rollout.queries_per_step = args.group_size, args.queries
    recipe.rollout.max_new_tokens, recipe.order.variance = args.max_new_tokens, False
    recipe.train = TrainConfig(micro_batch=args.queries * args.group_size, dtype="float32", parallel="none")
    model = from_pretrained(path, dtype=torch.float32).train()
    source = GRPOSource(recipe, queries, tok, EngineRollouts(model, max_rows=args.queries * args.group_size),
                        VerifierReward())
    reports = []
    source.report = reports.append
    trainer = Trainer(model, recipe.train, DistInfo(), tempfile.mkdtemp(prefix="bench_grpo_step_"),
                      make_grpo_loss("token_mean", 0.2, 0.2, 0.0, args.max_new_tokens), units_counter("token_mean"),
                      lr=1e-5, log=lambda *a: None)
    best = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        batches = source.next_step()
        t_source = time.perf_counter() - t
        t = time.perf_counter()
        trainer.step(batches)
        t_train = time.perf_counter() - t
        r = reports[-1]
        split = {"rollout_s": r["rollout_s"], "scoring_s": r["scoring_s"],
                 "prepare_s": t_source - r["rollout_s"] - r["scoring_s"], "training_s": t_train,
                 "total_s": t_source + t_train, "rollout_tokens_per_s": r["rollout_tokens_per_s"],
                 "train_tokens_per_s": sum(int(b.input_ids.numel()) for b in batches) / t_train}
        if best is None or split["total_s"] < best["total_s"]:
            best = split
    return best


def bench_dpo(args, path: Path, tok) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rng = random.Random(0)
    rows = [synthetic_pair("math-corrupted", two_digit_arithmetic(rng), rng)
            for _ in range(args.pairs * (args.repeats + 1))]
    file = Path(tempfile.mkdtemp(prefix="bench_dpo_")) / "pairs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs([file], tok, 512)
    ref = from_pretrained(path, dtype=torch.float32).eval()
    policy = from_pretrained(path, dtype=torch.float32).train()
    with torch.no_grad():
        table = torch.stack([sequence_logps(ref, collate_pairs(pairs, [i], tok.pad_id))[0] for i in range(len(pairs))])
    trainer = Trainer(policy, TrainConfig(micro_batch=args.pairs, dtype="float32", parallel="none", weight_decay=0.0),
                      DistInfo(), tempfile.mkdtemp(prefix="bench_dpo_run_"), make_dpo_loss(0.1, 0.0), count_pairs,
                      lr=1e-5, log=lambda *a: None)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_dpo_trl_"), bf16=False, use_cpu=True, report_to=[],
                       beta=0.1, precompute_ref_log_probs=True, per_device_train_batch_size=args.pairs,
                       learning_rate=1e-5, max_grad_norm=1.0)
    trl = DPOTrainer(model=hf, ref_model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), args=config,
                     train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                                       "chosen": [{"role": "assistant", "content": "a"}],
                                                       "rejected": [{"role": "assistant", "content": "b"}]}]),
                     processing_class=AutoTokenizer.from_pretrained(path))
    trl.create_optimizer_and_scheduler(num_training_steps=10**6)
    trl.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one micro-batch per step here
    cursor = {"qwen25": 0, "trl": 0}

    def indices(name: str) -> list[int]:
        start = (cursor[name] % (args.repeats + 1)) * args.pairs
        cursor[name] += 1
        return list(range(start, start + args.pairs))

    def real_tokens(idx) -> int:
        return sum(2 * len(pairs[i].prompt) + len(pairs[i].chosen) + len(pairs[i].rejected) for i in idx)

    def ours_step() -> tuple[float, int]:
        idx = indices("qwen25")
        batch = collate_pairs(pairs, idx, tok.pad_id)
        rows = table[idx]
        batch.ref_logps = torch.cat([rows[:, 0], rows[:, 1]])
        return trainer.step([batch])["loss"], real_tokens(idx)

    def trl_step() -> tuple[float, int]:
        idx = indices("trl")
        batch = trl.data_collator([{"prompt_ids": pairs[i].prompt.tolist(), "chosen_ids": pairs[i].chosen.tolist(),
                                    "rejected_ids": pairs[i].rejected.tolist(), "ref_chosen_logps": float(table[i, 0]),
                                    "ref_rejected_logps": float(table[i, 1])} for i in idx])
        hf.train()
        loss = trl.training_step(hf, batch)
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        trl.optimizer.step()
        trl.optimizer.zero_grad(set_to_none=True)
        return float(loss), real_tokens(idx)

    first = {"qwen25": ours_step()[0], "trl": trl_step()[0]}
    best = {"qwen25": 0.0, "trl": 0.0}
    for _ in range(args.repeats):
        for name, fn in (("qwen25", ours_step), ("trl", trl_step)):
            t = time.perf_counter()
            _, n = fn()
            best[name] = max(best[name], n / (time.perf_counter() - t))
    return {**best, "first_loss": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen25-tiny")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    tok = load_tokenizer("qwen2.5")
    path = save_random_model(args.preset, Path(tempfile.mkdtemp(prefix="bench_grpo_model_")) / "m")
    rng = random.Random(0)
    problems = [two_digit_arithmetic(rng) for _ in range(args.queries)]
    queries = [math_query(p, f"q{i}", "bench") for i, p in enumerate(problems)]
    prompts = [tok.encode_chat(q.messages, add_generation_prompt=True)[0] for q in queries]
    print(f"{cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}; {args.preset} (vocab 151,936), {args.queries} queries x "
          f"{args.group_size} samples x {args.max_new_tokens} new tokens, fp32")
    split = grpo_step_split(args, path, tok, queries)
    print("GRPO step (qwen25): " + ", ".join(f"{k} {v:.3f}" if k.endswith("_s") else f"{k} {v:,.0f}"
                                             for k, v in split.items()), flush=True)
    rollout = bench_rollouts(args, path, tok, prompts)
    print(f"rollout tokens/s: qwen25 {rollout['qwen25']:,.0f}, TRL GRPOTrainer (transformers generate) "
          f"{rollout['trl']:,.0f}, {rollout['qwen25'] / rollout['trl']:.2f}x", flush=True)
    dpo = bench_dpo(args, path, tok)
    print(f"DPO step tokens/s: qwen25 {dpo['qwen25']:,.0f}, TRL DPOTrainer {dpo['trl']:,.0f}, "
          f"{dpo['qwen25'] / dpo['trl']:.2f}x (first-step loss qwen25 {dpo['first_loss']['qwen25']:.5f}, "
          f"TRL {dpo['first_loss']['trl']:.5f})", flush=True)
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")
    print("\n| measurement | qwen25 | TRL 1.16 | ratio |\n|---|---|---|---|")
    print(f"| rollout tokens/s ({args.queries}x{args.group_size}, {args.max_new_tokens} new) | {rollout['qwen25']:,.0f} "
          f"| {rollout['trl']:,.0f} | {rollout['qwen25'] / rollout['trl']:.2f}x |")
    print(f"| DPO step tokens/s ({args.pairs} pairs) | {dpo['qwen25']:,.0f} | {dpo['trl']:,.0f} | "
          f"{dpo['qwen25'] / dpo['trl']:.2f}x |")
    print(f"\nGRPO step split: rollout {split['rollout_s']:.2f} s, scoring {split['scoring_s']:.3f} s, preparing "
          f"{split['prepare_s']:.3f} s, training {split['training_s']:.2f} s (total {split['total_s']:.2f} s)")


if __name__ == "__main__":
    main()
