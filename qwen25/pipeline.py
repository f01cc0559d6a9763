"""`make run`: every stage of the report that exists, end to end on a laptop CPU, one report.

pretraining (corpus -> tokenizer -> shards -> two stages with ABF) -> SFT (offline conversations, two phases)
-> DPO with the Online Merging Optimizer (pairs from the verifiers pipeline) -> a reward model -> GRPO with rule
rewards -> evaluation (each stage's model on sampled standard benchmarks) -> `runs/tiny/report.md` with a section
per stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from qwen25.data.generators import ModelGenerator
from qwen25.eval.stage import evaluate_stages, plot_stages, stages_section
from qwen25.generation import SamplingParams, generate
from qwen25.io import atomic_write_text, read_jsonl
from qwen25.model import from_pretrained
from qwen25.posttraining.alignment_data import AlignmentDataSpec, build_alignment_data
from qwen25.posttraining.dpo import load_dpo_recipe, run_dpo
from qwen25.posttraining.grpo import load_grpo_recipe, run_grpo
from qwen25.posttraining.math_eval import chat_prompt, math_accuracy
from qwen25.posttraining.offline_data import build_offline_sft
from qwen25.posttraining.report import alignment_section, plot_dpo, plot_grpo, plot_phases, sft_section
from qwen25.posttraining.rm import load_rm_recipe, run_rm
from qwen25.posttraining.sft import load_sft_recipe, run_sft
from qwen25.pretraining.pipeline import run_pipeline
from qwen25.pretraining.recipe import load_recipe
from qwen25.tokenizer import load_tokenizer

SAMPLE_PROMPTS = ["Alice has 23 apples and buys 14 more. How many apples does Alice have now?",
                  "小明有35个苹果，送给朋友12个。还剩多少个？", "What is 48 + 27?",
                  "Write a Python function `is_even(n)`: Return True if n is even."]


def _replies(model, tok, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    stop = [tok.control_ids["<|im_end|>"], tok.endoftext_id]
    outs = generate(model, [chat_prompt(tok, p) for p in prompts],
                    SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=stop))
    return [tok.decode([i for i in ids if i not in stop]) for ids in outs]


ALIGNMENT_RECIPES = {"dpo": "recipes/dpo-tiny.toml", "rm": "recipes/rm-tiny.toml", "grpo": "recipes/grpo-tiny.toml"}


def run_all(pretrain_recipe: str = "recipes/tiny.toml", sft_recipe: str = "recipes/sft-tiny.toml",
            fresh: bool = False, log=print) -> Path:
    t0 = time.perf_counter()
    pre = load_recipe(pretrain_recipe)
    sft = load_sft_recipe(sft_recipe)  # every recipe checked before any work
    dpo, rm, grpo = (load_dpo_recipe(ALIGNMENT_RECIPES["dpo"]), load_rm_recipe(ALIGNMENT_RECIPES["rm"]),
                     load_grpo_recipe(ALIGNMENT_RECIPES["grpo"]))
    run_dir = pre.directory
    if fresh:
        for stage in (sft, dpo, rm, grpo):
            shutil.rmtree(stage.directory, ignore_errors=True)
    report = run_pipeline(pre, fresh=fresh)
    if report is None:
        raise RuntimeError("pretraining produced no report")

    t1 = time.perf_counter()
    data_dir = Path(sft.phases[0].data[0]).parent
    counts = build_offline_sft(run_dir / "data" / "corpus", data_dir)
    log(f"sft data: {json.dumps(counts['families'])} -> {data_dir}")
    tok = load_tokenizer(sft.model.path)
    problems = list(read_jsonl(data_dir / "math_eval.jsonl"))
    base = from_pretrained(sft.model.path, dtype="float32")
    before, _ = math_accuracy(base, tok, problems)
    before_samples = _replies(base, tok, SAMPLE_PROMPTS)
    final = run_sft(sft, fresh=True, log=log)
    tuned = from_pretrained(final, dtype="float32")
    after, records = math_accuracy(tuned, tok, problems)
    after_samples = _replies(tuned, tok, SAMPLE_PROMPTS)
    log(f"sft: held-out math accuracy {100 * before:.1f}% -> {100 * after:.1f}%")
    metrics = list(read_jsonl(sft.directory / "metrics.jsonl"))
    plot_phases(metrics, run_dir / "sft_loss.png", "SFT loss (dashed lines: phase boundaries)")
    atomic_write_text(sft.directory / "math_eval_after.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    stats = json.loads((sft.directory / "data_stats.json").read_text())
    section = sft_section(metrics, "sft_loss.png", counts, stats,
                          {"before": before, "after": after, "n": len(problems)},
                          [{"prompt": p, "before": b, "after": a}
                           for p, b, a in zip(SAMPLE_PROMPTS, before_samples, after_samples)],
                          (time.perf_counter() - t1) / 60)
    aligned, scores = run_alignment(run_dir, final, data_dir, tok, dpo, rm, grpo, {"math": problems}, log)
    section += aligned
    t2 = time.perf_counter()
    stages = {"pretrained": Path(sft.model.path), "sft": final, "dpo": dpo.directory / "hf",
              "grpo": grpo.directory / "hf"}
    rows = evaluate_stages(stages, run_dir / "eval", log=log)
    heldout = {"pretrained": before, "sft": after, "dpo": scores["DPO"]["math"], "grpo": scores["GRPO"]["math"]}
    plot_stages(rows, heldout, run_dir / "eval_stages.png")
    section += "\n" + stages_section(rows, heldout, len(problems), "eval_stages.png", (time.perf_counter() - t2) / 60)
    text = report.read_text()
    text = text.replace("\n## Settings", "\n" + section + "\n## Settings", 1) if "\n## Settings" in text else text + section
    text += f"\nWhole pipeline: {(time.perf_counter() - t0) / 60:.1f} min.\n"
    atomic_write_text(report, text)
    log(f"report: {report}")
    return report


def run_alignment(run_dir: Path, sft_final: Path, sft_data: Path, tok, dpo, rm, grpo, evals: dict[str, list],
                  log=print, spec: AlignmentDataSpec | None = None) -> tuple[str, dict[str, dict[str, float]]]:
    """Pairs and queries -> DPO (from the SFT model) -> reward model -> GRPO (from the DPO model); held-out
    exact-answer accuracy after every stage. Returns the report's alignment sections and the accuracies
    ({"SFT" | "DPO" | "GRPO": {eval set: accuracy}})."""
    t0 = time.perf_counter()
    data_dir = Path(dpo.data.train[0]).parent
    shutil.rmtree(data_dir, ignore_errors=True)
    generator = ModelGenerator.load(sft_final, max_new_tokens=48, temperature=1.0)
    counts = build_alignment_data(sft_data, data_dir, generator, spec)
    log(f"alignment data: {counts['dpo_sampled']} sampled + {counts['dpo_corrupted']} corrupted DPO pairs, "
        f"{counts['rm_train']} reward-model pairs, {counts['grpo_queries']} GRPO queries -> {data_dir}")
    evals = {**evals, "grpo task": list(read_jsonl(data_dir / "grpo_eval.jsonl"))}

    def accuracy(model_dir: Path) -> dict[str, float]:
        model = from_pretrained(model_dir, dtype="float32")
        return {name: math_accuracy(model, tok, problems)[0] for name, problems in evals.items()}

    minutes = {"data": (time.perf_counter() - t0) / 60}
    scores = {"SFT": accuracy(sft_final)}
    for name, recipe, run in (("DPO", dpo, run_dpo), ("reward model", rm, run_rm), ("GRPO", grpo, run_grpo)):
        t = time.perf_counter()
        final = run(recipe, fresh=True, log=log)
        minutes[name] = (time.perf_counter() - t) / 60
        if name != "reward model":
            scores[name] = accuracy(final)
            log(f"{name.lower()}: held-out accuracy " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores[name].items()))
    plot_dpo(list(read_jsonl(dpo.directory / "metrics.jsonl")), run_dir / "dpo.png")
    plot_grpo(list(read_jsonl(grpo.directory / "metrics.jsonl")), run_dir / "grpo.png")
    rm_eval = json.loads((rm.directory / "rm_eval.json").read_text())
    return alignment_section(counts, scores, {k: len(v) for k, v in evals.items()}, rm_eval, dpo, grpo,
                             list(read_jsonl(dpo.directory / "metrics.jsonl")),
                             list(read_jsonl(grpo.directory / "metrics.jsonl")), minutes), scores
