"""Synthetic math documents with verifiable answers: arithmetic drills and templated word problems, in English
and Chinese. Every problem carries its answer, computed here, so a model's completions can be checked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    working: str = ""  # the computation that gives the answer, e.g. "12 + 7 = 19" (for worked SFT answers)

    def text(self, zh: bool) -> str:
        return f"{self.question}\n{'答案' if zh else 'Answer'}: {self.answer}"


def arithmetic(rng: random.Random) -> Problem:
    op = rng.choice("+-*")
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    if op == "*":
        b = rng.randint(2, 99)
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return Problem(f"{a} {op} {b} =", answer, f"{a} {op} {b} = {answer}")


def small_arithmetic(rng: random.Random) -> Problem:
    """A two-digit number plus or minus a one-digit one (never below zero), asked as "What is 47 + 8?": the
    drill a tiny model can learn (`make run`'s SFT mixes it in, and it is the GRPO task)."""
    a, b = rng.randint(10, 99), rng.randint(1, 9)
    if rng.random() < 0.5:
        return Problem(f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}")
    return Problem(f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}")


def larger_number(rng: random.Random) -> Problem:
    """"Which is larger, 47 or 82?" over two different two-digit numbers: a comparison a tiny model learns from
    a few hundred SFT examples (`make run`'s SFT mixes it in; its GRPO task is `largest_of_three`)."""
    a, b = rng.sample(range(10, 100), 2)
    return Problem(f"Which is larger, {a} or {b}?", max(a, b), f"{max(a, b)} > {min(a, b)}")


def largest_of_three(rng: random.Random) -> Problem:
    """"Which is the largest of 47, 82 and 63?" over three different two-digit numbers: `make run`'s GRPO task.
    SFT teaches the two-number question (`larger_number`) and never this one, so every question of the task is
    new to the model and what it gains here comes from reinforcement."""
    a, b, c = rng.sample(range(10, 100), 3)
    return Problem(f"Which is the largest of {a}, {b} and {c}?", max(a, b, c), f"{max(a, b, c)} is the largest")


_NAMES = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima", "Gao", "Hiro"]
_ITEMS = ["apples", "books", "marbles", "coins", "pencils", "stamps"]
_ZH_NAMES = ["小明", "小红", "张伟", "李娜", "王芳", "刘洋"]
_ZH_ITEMS = ["苹果", "本书", "颗弹珠", "枚硬币", "支铅笔", "张邮票"]


def word_problem(rng: random.Random, zh: bool) -> Problem:
    kind = rng.randrange(4)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
    name = rng.choice(_ZH_NAMES if zh else _NAMES)
    item = rng.choice(_ZH_ITEMS if zh else _ITEMS)
    if kind == 0:
        q = (f"{name}有{a}个{item}，又买了{b}个。{name}现在一共有多少个？" if zh else
             f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?")
        return Problem(q, a + b, f"{a} + {b} = {a + b}")
    if kind == 1:
        a = a + b
        q = (f"{name}有{a}个{item}，送给朋友{b}个。还剩多少个？" if zh else
             f"{name} has {a} {item} and gives away {b}. How many are left?")
        return Problem(q, a - b, f"{a} - {b} = {a - b}")
    if kind == 2:
        q = (f"每个盒子装{a}个{item}，{name}有{c}个盒子。一共有多少个？" if zh else
             f"Each box holds {a} {item}. {name} has {c} boxes. How many {item} are there in total?")
        return Problem(q, a * c, f"{a} * {c} = {a * c}")
    total = a * c
    q = (f"{name}把{total}个{item}平均分给{c}个人。每人得到多少个？" if zh else
         f"{name} shares {total} {item} equally among {c} friends. How many does each friend get?")
    return Problem(q, a, f"{total} / {c} = {a}")


def math_documents(n_docs: int, seed: int, problems_per_doc: int = 12) -> Iterator[str]:
    """Deterministic documents mixing drills and word problems; about one in three is in Chinese."""
    rng = random.Random(seed)
    for _ in range(n_docs):
        zh = rng.random() < 0.35
        lines = []
        for _ in range(problems_per_doc):
            problem = arithmetic(rng) if rng.random() < 0.5 else word_problem(rng, zh)
            lines.append(problem.text(zh))
        yield "\n\n".join(lines)
