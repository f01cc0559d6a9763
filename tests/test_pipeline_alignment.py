"""`make run`'s alignment stages end to end on a tiny random model: `qwen25.pipeline.run_alignment` with the
recipes `make run` uses (shortened by overrides) builds the data, runs DPO, the reward model and GRPO (rollouts on
the engine), evaluates after each stage and returns the report's sections."""

import json

import pytest

from qwen25.io import read_jsonl
from qwen25.pipeline import ALIGNMENT_RECIPES, run_alignment
from qwen25.posttraining.alignment_data import AlignmentDataSpec
from qwen25.posttraining.dpo import load_dpo_recipe
from qwen25.posttraining.grpo import load_grpo_recipe
from qwen25.posttraining.rm import load_rm_recipe
from qwen25.tokenizer import load_tokenizer
from tests.align_helpers import tiny_hf_model


@pytest.mark.slow
def test_run_alignment_runs_every_stage_and_writes_the_sections(tmp_path):
    sft, base = tiny_hf_model(tmp_path / "sft", seed=0), tiny_hf_model(tmp_path / "base", seed=1)
    sft_data = tmp_path / "sft_data"
    sft_data.mkdir()
    problems = [{"question": f"What is {i} + 2?", "answer": i + 2} for i in range(4)]
    (sft_data / "math_eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    data = tmp_path / "align" / "data"
    dpo = load_dpo_recipe(ALIGNMENT_RECIPES["dpo"], [
        f'run_dir="{tmp_path / "dpo"}"', f'model.path="{sft}"', f'optimizer.base="{base}"',
        f'data.train=["{data / "dpo_pairs.jsonl"}"]', f'data.heldout=["{data / "rm_heldout.jsonl"}"]',
        "data.pairs_per_step=8", "train.micro_batch=8"])
    rm = load_rm_recipe(ALIGNMENT_RECIPES["rm"], [
        f'run_dir="{tmp_path / "rm"}"', f'model.path="{sft}"', f'data.train=["{data / "rm_train.jsonl"}"]',
        f'data.heldout=["{data / "rm_heldout.jsonl"}"]', "data.epochs=1", "data.pairs_per_step=16",
        "train.micro_batch=16"])
    grpo = load_grpo_recipe(ALIGNMENT_RECIPES["grpo"], [
        f'run_dir="{tmp_path / "grpo"}"', f'model.path="{tmp_path / "dpo" / "hf"}"',
        f'queries=["{data / "grpo_queries.jsonl"}"]', f'heldout=["{data / "grpo_heldout.jsonl"}"]', "steps=2",
        "rollout.queries_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=6", "order.lookahead=4",
        "train.eval_every=2"])
    spec = AlignmentDataSpec(grpo_queries=8, grpo_heldout=4, pair_queries=4, pair_samples=2, pair_target=16,
                             rm_pairs=8, rm_heldout=4)
    logs = []
    section, scores = run_alignment(tmp_path, sft, sft_data, load_tokenizer(sft), dpo, rm, grpo, {"math": problems},
                                    log=logs.append, spec=spec)
    assert set(scores) == {"SFT", "DPO", "GRPO"} and all(set(v) == {"math", "grpo task"} for v in scores.values())
    for title in ("## DPO with the Online Merging Optimizer", "## Reward model", "## GRPO",
                  "## Held-out exact-answer accuracy after each stage"):
        assert title in section
    assert "| SFT |" in section and "| DPO |" in section and "| GRPO |" in section
    assert (tmp_path / "dpo.png").is_file() and (tmp_path / "grpo.png").is_file()
    assert (tmp_path / "rm" / "rm_eval.json").is_file()
    rollouts = [r for r in read_jsonl(tmp_path / "grpo" / "metrics.jsonl") if r.get("event") == "rollout"]
    assert len(rollouts) == 2 and all(r["rollout_tokens"] > 0 for r in rollouts)
    assert (tmp_path / "grpo" / "hf" / "config.json").is_file()
