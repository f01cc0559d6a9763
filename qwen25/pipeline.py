"""`make run`: every stage of the report that exists, end to end on a laptop CPU, one report.

pretraining (corpus -> tokenizer -> shards -> two stages with ABF) -> SFT (offline conversations, two phases)
-> `runs/tiny/report.md` with a section per stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from qwen25.generation import SamplingParams, generate
from qwen25.io import atomic_write_text, read_jsonl
from qwen25.model import from_pretrained
from qwen25.posttraining.math_eval import chat_prompt, math_accuracy
from qwen25.posttraining.offline_data import build_offline_sft
from qwen25.posttraining.report import plot_phases, sft_section
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
                    SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=stop), pad_id=tok.pad_id)
    return [tok.decode([i for i in ids if i not in stop]) for ids in outs]


def run_all(pretrain_recipe: str = "recipes/tiny.toml", sft_recipe: str = "recipes/sft-tiny.toml",
            fresh: bool = False, log=print) -> Path:
    t0 = time.perf_counter()
    pre = load_recipe(pretrain_recipe)
    sft = load_sft_recipe(sft_recipe)  # both recipes checked before any work
    run_dir = pre.directory
    if fresh:
        shutil.rmtree(sft.directory, ignore_errors=True)
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
    text = report.read_text()
    text = text.replace("\n## Settings", "\n" + section + "\n## Settings", 1) if "\n## Settings" in text else text + section
    text += f"\nWhole pipeline: {(time.perf_counter() - t0) / 60:.1f} min.\n"
    atomic_write_text(report, text)
    log(f"report: {report}")
    return report
