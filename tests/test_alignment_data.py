"""make run's alignment data: queries and held-out problems are disjoint from each other and from SFT's data, DPO
pairs come from the verifiers pipeline and are topped up with corrupted answers, and reward-model pairs carry
their categories."""

import json
import re

from qwen25.io import read_jsonl
from qwen25.posttraining.alignment_data import (AlignmentDataSpec, build_alignment_data, corrupted,
                                                two_digit_arithmetic)
from qwen25.posttraining.pairs import load_pairs
from qwen25.tokenizer import load_tokenizer


class Guesser:
    """A fake model: for "What is a + b?" it answers right on even samples, wrong on odd ones; word problems get
    a fixed guess (mostly wrong)."""

    name = "guesser"

    def __call__(self, prompts, k, seed):
        out = []
        for messages in prompts:
            m = re.match(r"What is (\d+) ([+-]) (\d+)\?", messages[-1]["content"])
            right = (int(m[1]) + int(m[3]) if m[2] == "+" else int(m[1]) - int(m[3])) if m else 7
            out.append([f"The answer is {right if j % 2 == 0 else right + 1}." for j in range(k)])
        return out


def test_alignment_data_is_disjoint_and_complete(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "math_eval.jsonl").write_text(json.dumps({"question": "What is 10 + 10?", "answer": 20}) + "\n")
    (sft / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "What is 11 + 11?"},
                                                             {"role": "assistant", "content": "22"}]}) + "\n")
    spec = AlignmentDataSpec(grpo_queries=30, grpo_heldout=20, pair_queries=20, pair_samples=2, pair_target=30,
                             rm_pairs=10, rm_heldout=4)
    counts = build_alignment_data(sft, tmp_path / "out", Guesser(), spec)
    out = tmp_path / "out"
    train_q = [q["messages"][0]["content"] for q in read_jsonl(out / "grpo_queries.jsonl")]
    held_q = [q["messages"][0]["content"] for q in read_jsonl(out / "grpo_heldout.jsonl")]
    pair_q = [q["messages"][0]["content"] for q in read_jsonl(out / "pair_queries.jsonl")]
    assert len(train_q) == 30 and len(held_q) == 20 and len(set(train_q + held_q + pair_q)) == 70
    assert not {"What is 10 + 10?", "What is 11 + 11?"} & set(train_q + held_q + pair_q)
    assert [r["question"] for r in read_jsonl(out / "grpo_eval.jsonl")] == held_q
    assert counts["dpo_sampled"] + counts["dpo_corrupted"] == 30  # sampled pairs topped up to the target
    assert counts["dpo_sampled"] > 0  # the arithmetic queries got a passing and a failing answer
    tok = load_tokenizer("qwen2.5")
    dpo = load_pairs([out / "dpo_pairs.jsonl"], tok, 256)
    assert {p.category for p in dpo} == {"math-sampled", "math-corrupted"}
    held = load_pairs([out / "rm_heldout.jsonl"], tok, 256)
    assert {p.category for p in held} >= {"math-corrupted", "conciseness", "compliance"}
    assert counts["rm_train"] == counts["dpo_sampled"] + 30


def test_corrupted_answers_differ_and_keep_the_working():
    import random

    rng = random.Random(0)
    for _ in range(200):
        p = two_digit_arithmetic(rng)
        bad = corrupted(p, rng)
        assert bad.answer != p.answer and bad.answer >= 0
        assert bad.working.rsplit("=", 1)[0] == p.working.rsplit("=", 1)[0]


def test_model_generator_samples_k_different_completions_reproducibly(tmp_path):
    """The adapter over the inference engine: k samples per prompt, not k copies of one; prompt i's samples
    depend on its own seed only, so a chunk of the prompts reproduces the same completions as the whole list."""
    from qwen25.data.generators import ModelGenerator
    from tests.align_helpers import tiny_hf_model

    gen = ModelGenerator.load(tiny_hf_model(tmp_path / "m"), max_new_tokens=6, temperature=1.0)
    prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(3)]
    out = gen(prompts, 4, [5, 6, 7])
    assert [len(o) for o in out] == [4, 4, 4] and len(set(out[0])) > 1
    assert gen(prompts[1:], 4, [6, 7]) == out[1:]
