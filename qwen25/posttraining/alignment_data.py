"""Data for `make run`'s alignment stages, from the project's own generators (never an evaluation set):

- GRPO queries and a held-out set on one verifiable task: the largest of three two-digit numbers
  (`synthetic_math.largest_of_three`, "Which is the largest of 47, 82 and 63?"), verified by the math verifier
  against the computed answer. SFT teaches the two-number comparison and never this question, so the model
  starts with the format and a related skill, and what it gains comes from the rewards;
- DPO pairs by the verifiers pipeline (`qwen25/data/curation.py`): the SFT model samples k responses to math
  queries, the math verifier judges them, a passing and a failing response of the same query make a pair; where
  the model produced no such pair for enough queries, pairs of the worked correct answer against a corrupted one
  fill the set (their count is reported separately);
- reward-model pairs in four categories, with held-out pairs for per-category accuracy: math correctness
  (sampled: the pipeline's pairs), math correctness (corrupted answers), conciseness (the same correct answer,
  plain vs padded with filler) and instruction compliance (a request for the bare number, answered with the
  number vs with a sentence).

Held-out questions never appear in training data of any stage (SFT's included): every generator skips the
questions it has already used, and starts with the SFT training questions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qwen25.data.curation import curate
from qwen25.data.generators import Generator
from qwen25.data.queries import Query, write_queries
from qwen25.data.synthetic_math import Problem, largest_of_three, word_problem
from qwen25.io import atomic_write_text, read_jsonl
from qwen25.posttraining.offline_data import math_reply


def two_digit_arithmetic(rng: random.Random) -> Problem:
    """a + b or a - b with two-digit operands (a subtraction never goes below zero): the preference pairs' and
    reward model's arithmetic (8,100 questions, enough to stay clear of SFT's)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return Problem(f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}")
    a, b = max(a, b), min(a, b)
    return Problem(f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}")


def math_query(problem: Problem, qid: str, source: str) -> Query:
    return Query(qid, "math", [{"role": "user", "content": problem.question}],
                 {"kind": "math", "reference": str(problem.answer)}, source,
                 reference=math_reply(problem, zh=False))


def unique_problems(make, rng: random.Random, seen: set[str], max_misses: int = 100_000) -> Iterator[Problem]:
    """Problems from `make` whose questions are not in `seen` (which grows); an error, not a hang, when the
    generator has no new question left."""
    misses = 0
    while True:
        p = make(rng)
        if p.question not in seen:
            seen.add(p.question)
            misses = 0
            yield p
        else:
            misses += 1
            if misses >= max_misses:
                raise ValueError(f"{getattr(make, '__name__', make)}: no new question in {max_misses:,} draws "
                                 f"({len(seen):,} used); ask for fewer problems")


def corrupted(problem: Problem, rng: random.Random) -> Problem:
    """The same working with a wrong result (off by a small amount, or digits swapped)."""
    answer = problem.answer
    wrong = answer
    while wrong == answer or wrong < 0:
        wrong = answer + rng.choice([-10, -2, -1, 1, 2, 10]) if rng.random() < 0.7 or answer < 10 else \
            int(str(answer)[::-1])
    left = problem.working.rsplit("=", 1)[0].strip()
    return Problem(problem.question, wrong, f"{left} = {wrong}")


FILLER = ["Let me think about this carefully. ", "This is a simple question. ", "Great question! ",
          "We need to compute the result step by step. "]


def pair(problem: Problem, chosen: str, rejected: str, category: str, source: str) -> dict:
    return {"prompt": [{"role": "user", "content": problem.question}], "chosen": chosen, "rejected": rejected,
            "category": category, "provenance": {"source": source}}


def synthetic_pair(category: str, problem: Problem, rng: random.Random) -> dict:
    right = math_reply(problem, zh=False)
    if category == "math-corrupted":
        return pair(problem, right, math_reply(corrupted(problem, rng), zh=False), category, "corrupted answer")
    if category == "conciseness":
        padding = "".join(rng.sample(FILLER, 2))
        return pair(problem, right, padding + right + " " + rng.choice(FILLER).strip(), category, "padded answer")
    if category == "compliance":
        ask = Problem(problem.question + " Reply with the number only.", problem.answer, problem.working)
        return pair(ask, str(problem.answer), right, category, "instruction: number only")
    raise ValueError(f"unknown pair category {category!r}")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@dataclass
class AlignmentDataSpec:
    grpo_queries: int = 600
    grpo_heldout: int = 200
    pair_queries: int = 400  # math queries the SFT model answers k times for DPO pairs
    pair_samples: int = 4
    pair_target: int = 400  # DPO pairs: sampled ones, topped up with corrupted ones
    rm_pairs: int = 300  # per synthetic category (train); the sampled category takes what the pipeline made
    rm_heldout: int = 50  # per category
    seed: int = 11


def build_alignment_data(sft_data_dir: str | Path, out_dir: str | Path, generator: Generator,
                         spec: AlignmentDataSpec | None = None, progress: bool = False) -> dict:
    """Write into `out_dir`: grpo_queries.jsonl, grpo_heldout.jsonl (queries) and grpo_eval.jsonl
    ({"question", "answer"}), dpo_pairs.jsonl, rm_train.jsonl, rm_heldout.jsonl; return the counts.
    `sft_data_dir` holds the SFT data (its questions are never reused); `generator` samples the pairs."""
    spec = spec or AlignmentDataSpec()
    sft_data_dir, out_dir = Path(sft_data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {m["content"] for path in ("train.jsonl", "heldout.jsonl") if (sft_data_dir / path).is_file()
            for r in read_jsonl(sft_data_dir / path) for m in r["messages"] if m["role"] == "user"}
    seen |= {r["question"] for r in read_jsonl(sft_data_dir / "math_eval.jsonl")}
    rng = random.Random(spec.seed)

    task = unique_problems(largest_of_three, rng, seen)
    held = [next(task) for _ in range(spec.grpo_heldout)]
    train = [next(task) for _ in range(spec.grpo_queries)]
    arithmetic = unique_problems(two_digit_arithmetic, rng, seen)
    write_queries([math_query(p, f"grpo-{i:05d}", f"largest_of_three seed={spec.seed}") for i, p in enumerate(train)],
                  out_dir / "grpo_queries.jsonl")
    write_queries([math_query(p, f"grpo-heldout-{i:05d}", f"largest_of_three seed={spec.seed}")
                   for i, p in enumerate(held)], out_dir / "grpo_heldout.jsonl")
    write_jsonl(out_dir / "grpo_eval.jsonl", [{"question": p.question, "answer": p.answer} for p in held])

    # DPO pairs by the verifiers pipeline: word problems and small arithmetic the SFT model answers k times
    words = unique_problems(lambda r: word_problem(r, zh=False), rng, seen)
    mixed = [next(words) if i % 2 else next(arithmetic) for i in range(spec.pair_queries)]
    write_queries([math_query(p, f"pairs-{i:05d}", f"alignment_data seed={spec.seed}") for i, p in enumerate(mixed)],
                  out_dir / "pair_queries.jsonl")
    curate(out_dir / "pair_queries.jsonl", generator, out_dir / "curation", k=spec.pair_samples, seed=spec.seed,
           progress=progress)
    sampled = [dict(p, category="math-sampled") for p in read_jsonl(out_dir / "curation" / "pairs.jsonl")]
    rng.shuffle(sampled)
    rm_sampled_held = sampled[:min(spec.rm_heldout, len(sampled) // 4)]
    sampled_train = sampled[len(rm_sampled_held):]
    fill = [synthetic_pair("math-corrupted", next(words) if i % 2 else next(arithmetic), rng)
            for i in range(max(0, spec.pair_target - len(sampled_train)))]
    write_jsonl(out_dir / "dpo_pairs.jsonl", sampled_train + fill)

    rm_train, rm_held = list(sampled_train), list(rm_sampled_held)
    for category in ("math-corrupted", "conciseness", "compliance"):
        rows = [synthetic_pair(category, next(words) if i % 2 else next(arithmetic), rng)
                for i in range(spec.rm_pairs + spec.rm_heldout)]
        rm_train += rows[:spec.rm_pairs]
        rm_held += rows[spec.rm_pairs:]
    rng.shuffle(rm_train)
    write_jsonl(out_dir / "rm_train.jsonl", rm_train)
    write_jsonl(out_dir / "rm_heldout.jsonl", rm_held)
    return {"grpo_queries": len(train), "grpo_heldout": len(held), "pair_queries": len(mixed),
            "pair_samples": spec.pair_samples, "dpo_sampled": len(sampled_train), "dpo_corrupted": len(fill),
            "rm_held_sampled": len(rm_sampled_held), "rm_train": len(rm_train), "rm_heldout": len(rm_held),
            "curation": (out_dir / "curation" / "summary.md").read_text()}
