"""SFT conversations built from the project's own offline material, for `make run` and tests.

Families (report §4.1, scaled down to what a tiny model can learn): math word problems and drills with worked,
verified answers (`qwen25/data/synthetic_math.py`), code tasks from the docstrings and bodies of short standard-
library functions, English and Chinese reading questions about corpus passages, and tool-call conversations
with a calculator tool. Nothing comes from an evaluation set. Held-out conversations and the held-out math
problems are disjoint from training by construction (separate seeds, and any question seen in training is
skipped).
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qwen25.data import sources
from qwen25.data.synthetic_math import Problem, arithmetic, larger_number, small_arithmetic, word_problem
from qwen25.io import atomic_path, read_jsonl

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression with + - * and integers.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def math_problem(rng: random.Random) -> tuple[Problem, bool]:
    """5% "which is larger" questions and 25% two-digit +- one-digit drills (English), 25% arithmetic up to three
    digits, 45% word problems (a third of them in Chinese)."""
    r = rng.random()
    if r < 0.05:
        return larger_number(rng), False
    if r < 0.3:
        return small_arithmetic(rng), False
    zh = rng.random() < 0.35
    return (arithmetic(rng) if r < 0.55 else word_problem(rng, zh)), zh


def math_reply(problem: Problem, zh: bool) -> str:
    return f"{problem.working}。答案是 {problem.answer}。" if zh else f"{problem.working}. The answer is {problem.answer}."


def math_question(problem: Problem) -> str:
    q = problem.question
    return f"What is {q[:-2]}?" if q.endswith(" =") else q


def math_conversation(problem: Problem, zh: bool) -> dict:
    return {"messages": [{"role": "user", "content": math_question(problem)},
                         {"role": "assistant", "content": math_reply(problem, zh)}], "family": "math"}


def tool_conversation(rng: random.Random) -> dict:
    a, b = rng.randint(10, 999), rng.randint(2, 99)
    op = rng.choice("+-*")
    expression = f"{a} {op} {b}"
    value = eval(expression)  # two integers and one operator, built here
    ask = rng.choice(["Use the calculator to compute {e}.", "What is {e}? Use the tool.", "Please calculate {e}."])
    return {"tools": [CALCULATOR], "family": "tool", "messages": [
        {"role": "user", "content": ask.format(e=expression)},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}]},
        {"role": "tool", "content": str(value)},
        {"role": "assistant", "content": f"{expression} = {value}."}]}


def stdlib_functions(max_lines: int = 12) -> Iterator[tuple[str, str, str]]:
    """(signature, first docstring paragraph, source) of short documented standard-library functions."""
    for source in sources.python_stdlib():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.end_lineno - node.lineno + 1 > max_lines or len(doc) > 300:
                continue
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            indent = len(body) - len(body.lstrip(" "))
            body = "\n".join(line[indent:] for line in body.splitlines())
            yield f"{node.name}({ast.unparse(node.args)})", doc.split("\n\n")[0].replace("\n", " "), body


def code_conversation(signature: str, doc: str, body: str) -> dict:
    return {"family": "code", "messages": [
        {"role": "user", "content": f"Write a Python function `{signature}`: {doc}"},
        {"role": "assistant", "content": f"```python\n{body}\n```"}]}


_EN_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)
_ZH_SENTENCE = re.compile(r"^(.+?[。！？])")


def reading_conversation(text: str, zh: bool) -> dict | None:
    """Ask for the first sentence of a short passage (copying is within a tiny model's reach)."""
    passage = " ".join(text.split())[:400] if not zh else "".join(text.split())[:300]
    match = (_ZH_SENTENCE if zh else _EN_SENTENCE).match(passage)
    if not match or not 10 <= len(match.group(1)) <= 160 or len(passage) < 2 * len(match.group(1)):
        return None
    ask = "下面这段话的第一句是什么？\n\n" if zh else "What is the first sentence of the following text?\n\n"
    return {"family": "reading-zh" if zh else "reading-en", "messages": [
        {"role": "user", "content": ask + passage}, {"role": "assistant", "content": match.group(1)}]}


def long_reading_conversation(docs: list[str], target_chars: int) -> dict | None:
    """A long passage (several corpus documents) and a question only its end answers: its last sentence."""
    passage = " ".join(" ".join(d.split()) for d in docs)[:target_chars]
    cut = max(passage.rfind(". "), passage.rfind("? "), passage.rfind("! "))
    if cut < target_chars // 2:
        return None
    passage = passage[:cut + 1]
    start = max(passage.rfind(". ", 0, cut - 1), passage.rfind("? ", 0, cut - 1), passage.rfind("! ", 0, cut - 1))
    last = passage[start + 2:].strip()
    if not 10 <= len(last) <= 200:
        return None
    return {"family": "long", "messages": [
        {"role": "user", "content": "What is the last sentence of the following text?\n\n" + passage},
        {"role": "assistant", "content": last}]}


@dataclass
class OfflineSFTSpec:
    math: int = 6000
    code: int = 1500
    reading: int = 2000
    tool: int = 500
    long: int = 0  # long-context conversations (written to long.jsonl for a long-context phase)
    long_chars: int = 20_000  # passage length of a long conversation, in characters
    heldout_each: int = 100  # held-out conversations per family
    math_eval: int = 200  # held-out math problems for exact-answer accuracy
    seed: int = 7


def build_offline_sft(corpus_dir: str | Path, out_dir: str | Path, spec: OfflineSFTSpec | None = None) -> dict:
    """Write train.jsonl, heldout.jsonl (conversations) and math_eval.jsonl ({"question", "answer"}) into
    `out_dir`; return counts per family. `corpus_dir` holds the pretraining corpus (train/heldout.jsonl)."""
    spec = spec or OfflineSFTSpec()
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    rng = random.Random(spec.seed)
    train: list[dict] = []
    held: list[dict] = []
    seen: set[str] = set()
    for _ in range(spec.math):
        p, zh = math_problem(rng)
        seen.add(p.question)
        train.append(math_conversation(p, zh))
    held_rng = random.Random(spec.seed + 1_000_003)
    math_eval = []
    while len(held) < spec.heldout_each or len(math_eval) < spec.math_eval:
        p, zh = math_problem(held_rng)
        if p.question in seen:
            continue
        seen.add(p.question)
        if len(held) < spec.heldout_each:
            held.append(math_conversation(p, zh))
        else:
            math_eval.append({"question": math_question(p), "answer": p.answer, "zh": zh})
    tools = [tool_conversation(rng) for _ in range(spec.tool + spec.heldout_each)]
    train += tools[:spec.tool]
    held += tools[spec.tool:]
    functions = []
    for item in stdlib_functions():
        functions.append(item)
        if len(functions) >= spec.code + spec.heldout_each:
            break
    rng.shuffle(functions)
    train += [code_conversation(*f) for f in functions[spec.heldout_each:]]
    held += [code_conversation(*f) for f in functions[:spec.heldout_each]]
    for split, target, limit in (("train", train, spec.reading), ("heldout", held, spec.heldout_each)):
        made = {"en": 0, "zh": 0}
        for doc in read_jsonl(corpus_dir / f"{split}.jsonl"):
            lang = {"en": "en", "zh": "zh"}.get(doc["domain"])
            if lang is None or made[lang] >= limit // 2:
                continue
            conversation = reading_conversation(doc["text"], lang == "zh")
            if conversation is not None:
                target.append(conversation)
                made[lang] += 1
            if all(n >= limit // 2 for n in made.values()):
                break
    long = []
    if spec.long:
        english = [d["text"] for d in read_jsonl(corpus_dir / "train.jsonl") if d["domain"] == "en"]
        for i in range(0, len(english), 40):
            if len(long) >= spec.long:
                break
            conversation = long_reading_conversation(english[i:i + 40], spec.long_chars)
            if conversation is not None:
                long.append(conversation)
    focus = [r for r in train if r["family"] in ("math", "tool")]
    rng.shuffle(train)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("focus.jsonl", focus), ("heldout.jsonl", held),
                       ("math_eval.jsonl", math_eval), ("long.jsonl", long)):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts: dict[str, dict[str, int]] = {}
    for split, rows in (("train", train), ("heldout", held)):
        for r in rows:
            counts.setdefault(r["family"], {"train": 0, "heldout": 0})[split] += 1
    return {"families": counts, "math_eval": len(math_eval), "focus": len(focus), "long": len(long)}
