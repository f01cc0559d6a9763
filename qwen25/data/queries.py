"""Query sets for post-training data, built from the project's own generators (never from evaluation sets):
each query carries its chat messages, the verifier that will judge responses, and where it came from.

Families: math (the synthetic arithmetic and word problems of `synthetic_math.py`, answer in \\boxed{}),
code (function tasks from templates, unit tests computed by a reference implementation here), instructions
(templated requests with IFEval-style constraints), structured (JSON Schema objects, markdown tables) and
logic (true/false and multiple choice with computed answers). Everything is a function of the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from qwen25.data import synthetic_math
from qwen25.io import atomic_write_text, iter_jsonl_lines
from qwen25.verify.instructions import RELATIONS, Constraint

FAMILIES = ("math", "code", "instructions", "structured", "logic")


@dataclass
class Query:
    id: str
    family: str
    messages: list[dict]
    verifier: dict  # {"kind": ..., parameters}: see qwen25.data.curation.VERIFIERS
    source: str  # provenance: generator and seed
    reference: str = ""  # a known-good response when the builder has one (a sanity check, not training data)

    def to_dict(self) -> dict:
        return asdict(self)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def math_query(rng: random.Random, index: int, seed: int) -> Query:
    zh = rng.random() < 0.3
    problem = synthetic_math.arithmetic(rng) if rng.random() < 0.4 else synthetic_math.word_problem(rng, zh)
    question = f"Compute {problem.question.rstrip(' =')}." if problem.question.endswith("=") else problem.question
    prompt = f"{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    return Query(f"math-{index:06d}", "math", _user(prompt), {"kind": "math", "reference": str(problem.answer)},
                 f"qwen25.data.synthetic_math seed={seed} index={index}",
                 reference=f"The answer is \\boxed{{{problem.answer}}}.")


@dataclass(frozen=True)
class CodeTask:
    name: str
    args: str
    describe: Callable[[dict], str]
    params: Callable[[random.Random], dict]
    solution: Callable[[dict], str]  # reference source, from the params
    inputs: Callable[[random.Random, dict], list[tuple]]


def _ints(rng: random.Random, n: int, lo: int = -20, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "paper", "glass", "night", "music"]

CODE_TASKS = [
    CodeTask("sum_multiples", "n",
             lambda p: f"returns the sum of all positive integers below n that are multiples of {p['a']} or {p['b']}",
             lambda r: {"a": r.randint(2, 5), "b": r.randint(6, 9)},
             lambda p: f"def sum_multiples(n):\n    return sum(i for i in range(1, n) if i % {p['a']} == 0 or "
                       f"i % {p['b']} == 0)\n",
             lambda r, p: [(r.randint(0, 200),) for _ in range(5)]),
    CodeTask("count_letters", "s",
             lambda p: f"returns how many characters of the string s are one of the letters {p['letters']!r}, "
                       f"ignoring case",
             lambda r: {"letters": "".join(sorted(r.sample("aeioulnrst", 3)))},
             lambda p: f"def count_letters(s):\n    return sum(c in {p['letters']!r} for c in s.lower())\n",
             lambda r, p: [(" ".join(r.sample(_WORDS, 3)).title(),) for _ in range(5)]),
    CodeTask("reverse_words", "s", lambda p: "returns the words of s (separated by single spaces) in reverse order, "
                                             "joined by single spaces",
             lambda r: {}, lambda p: "def reverse_words(s):\n    return ' '.join(reversed(s.split(' ')))\n",
             lambda r, p: [(" ".join(r.sample(_WORDS, r.randint(1, 5))),) for _ in range(5)]),
    CodeTask("running_max", "xs", lambda p: "returns a list whose i-th item is the largest of xs[0..i]",
             lambda r: {},
             lambda p: "def running_max(xs):\n    out = []\n    for x in xs:\n        out.append(x if not out else "
                       "max(out[-1], x))\n    return out\n",
             lambda r, p: [(_ints(r, r.randint(0, 8)),) for _ in range(5)]),
    CodeTask("label", "n",
             lambda p: f"returns {p['w1']!r} if n is divisible by {p['a']}, {p['w2']!r} if divisible by {p['b']}, "
                       f"{p['w1'] + p['w2']!r} if divisible by both, and str(n) otherwise",
             lambda r: {"a": r.choice([2, 3, 5]), "b": r.choice([7, 11]), "w1": r.choice(["Fizz", "Ping"]),
                        "w2": r.choice(["Buzz", "Pong"])},
             lambda p: f"def label(n):\n    s = ({p['w1']!r} if n % {p['a']} == 0 else '') + ({p['w2']!r} if n % "
                       f"{p['b']} == 0 else '')\n    return s or str(n)\n",
             lambda r, p: [(r.randint(1, 100),) for _ in range(4)] + [(p["a"] * p["b"],)]),
    CodeTask("fib_from", "n",
             lambda p: f"returns the n-th term (n >= 0) of the sequence with f(0) = {p['a']}, f(1) = {p['b']} and "
                       f"f(k) = f(k-1) + f(k-2)",
             lambda r: {"a": r.randint(0, 3), "b": r.randint(1, 4)},
             lambda p: f"def fib_from(n):\n    a, b = {p['a']}, {p['b']}\n    for _ in range(n):\n        a, b = b, "
                       f"a + b\n    return a\n",
             lambda r, p: [(r.randint(0, 30),) for _ in range(5)]),
    CodeTask("rotate_right", "xs, k", lambda p: "returns the list xs rotated right by k positions (k >= 0; k may "
                                                 "exceed the length; an empty list stays empty)",
             lambda r: {},
             lambda p: "def rotate_right(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return "
                       "xs[len(xs) - k:] + xs[:len(xs) - k]\n",
             lambda r, p: [(_ints(r, r.randint(0, 6)), r.randint(0, 9)) for _ in range(5)]),
    CodeTask("run_length", "s", lambda p: "returns the run-length encoding of s: each run of a repeated character "
                                          "becomes the character followed by the run length, e.g. 'aaab' -> 'a3b1'",
             lambda r: {},
             lambda p: "def run_length(s):\n    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j "
                       "< len(s) and s[j] == s[i]:\n            j += 1\n        out.append(s[i] + str(j - i))\n"
                       "        i = j\n    return ''.join(out)\n",
             lambda r, p: [("".join(r.choice("ab") * r.randint(1, 3) for _ in range(r.randint(0, 4))),)
                           for _ in range(5)]),
    CodeTask("second_largest", "xs", lambda p: "returns the second largest distinct value in xs, or None if there "
                                               "is none",
             lambda r: {},
             lambda p: "def second_largest(xs):\n    values = sorted(set(xs))\n    return values[-2] if "
                       "len(values) > 1 else None\n",
             lambda r, p: [(_ints(r, r.randint(0, 6), 0, 5),) for _ in range(5)]),
    CodeTask("caesar", "s", lambda p: f"shifts every lowercase ASCII letter of s forward by {p['k']} places in the "
                                      f"alphabet (wrapping from z to a) and leaves other characters unchanged",
             lambda r: {"k": r.randint(1, 25)},
             lambda p: f"def caesar(s):\n    return ''.join(chr((ord(c) - 97 + {p['k']}) % 26 + 97) if 'a' <= c <= "
                       f"'z' else c for c in s)\n",
             lambda r, p: [(" ".join(r.sample(_WORDS, 2)) + "!",) for _ in range(5)]),
    CodeTask("chunks", "xs, size", lambda p: "splits the list xs into consecutive chunks of length size (the last "
                                             "may be shorter) and returns the list of chunks",
             lambda r: {},
             lambda p: "def chunks(xs, size):\n    return [xs[i:i + size] for i in range(0, len(xs), size)]\n",
             lambda r, p: [(_ints(r, r.randint(0, 7)), r.randint(1, 3)) for _ in range(5)]),
    CodeTask("digital_root", "n", lambda p: "returns the digital root of the non-negative integer n (sum its digits "
                                            "repeatedly until one digit remains)",
             lambda r: {},
             lambda p: "def digital_root(n):\n    while n >= 10:\n        n = sum(int(d) for d in str(n))\n"
                       "    return n\n",
             lambda r, p: [(r.randint(0, 10 ** r.randint(1, 6)),) for _ in range(5)]),
]


def code_query(rng: random.Random, index: int, seed: int) -> Query:
    task = CODE_TASKS[index % len(CODE_TASKS)]
    params = task.params(rng)
    solution = task.solution(params)
    namespace: dict = {}
    exec(solution, namespace)  # our own reference code, not model output
    tests = [f"assert {task.name}({', '.join(map(repr, args))}) == {namespace[task.name](*args)!r}"
             for args in task.inputs(rng, params)]
    prompt = (f"Write a Python function `{task.name}({task.args})` that {task.describe(params)}.\n"
              f"Return the function in a ```python code block.")
    return Query(f"code-{index:06d}", "code", _user(prompt),
                 {"kind": "code_asserts", "tests": tests, "entry_point": task.name},
                 f"qwen25.data.queries.CODE_TASKS[{task.name}] seed={seed} index={index}",
                 reference=f"```python\n{solution}```")


_TOPICS = ["the water cycle", "a lighthouse keeper", "learning to ride a bicycle", "the history of paper",
           "a rainy market day", "how bees make honey", "a robot that paints", "the first snow of winter",
           "why the sky is blue", "a letter to a future self", "a mountain village", "the night train",
           "composting at home", "an old library", "the moon landing", "a lost umbrella"]
_FORMS = ["Write a short story about {t}.", "Explain {t} to a ten-year-old.", "Write a blog post about {t}.",
          "Write a poem about {t}.", "Describe {t} in a few paragraphs.", "Write a diary entry about {t}."]
_CONSTRAINT_PARAMS: dict[str, Callable[[random.Random], dict]] = {
    "word_count": lambda r: {"relation": r.choice(RELATIONS), "n": r.choice([40, 80, 150, 300])},
    "sentence_count": lambda r: {"relation": r.choice(RELATIONS), "n": r.choice([3, 5, 10])},
    "paragraph_count": lambda r: {"n": r.randint(2, 4)},
    "include_keywords": lambda r: {"keywords": r.sample(_WORDS, 2)},
    "forbidden_words": lambda r: {"forbidden": r.sample(["very", "really", "thing", "good", "nice"], 2)},
    "bullet_count": lambda r: {"n": r.randint(2, 5)},
    "title": lambda r: {},
    "highlighted_sections": lambda r: {"n": r.randint(1, 3)},
    "all_lowercase": lambda r: {},
    "all_uppercase": lambda r: {},
    "language": lambda r: {"language": r.choice(["en", "zh"])},
    "starts_with": lambda r: {"phrase": r.choice(["Once upon a time", "Here is", "Dear reader"])},
    "ends_with": lambda r: {"phrase": r.choice(["Is there anything else I can help with?", "The end."])},
    "no_commas": lambda r: {},
    "placeholders": lambda r: {"n": r.randint(1, 3)},
    "postscript": lambda r: {"marker": r.choice(["P.S.", "P.P.S"])},
    "wrap_in_quotes": lambda r: {},
}
_EXCLUSIVE = [{"all_lowercase", "all_uppercase", "language"}, {"starts_with", "wrap_in_quotes"},
              {"ends_with", "wrap_in_quotes", "postscript"}, {"language", "include_keywords"}]


def instruction_query(rng: random.Random, index: int, seed: int) -> Query:
    request = rng.choice(_FORMS).format(t=rng.choice(_TOPICS))
    chosen: list[str] = []
    wanted = rng.choice([1, 2, 3])
    for rule in rng.sample(sorted(_CONSTRAINT_PARAMS), len(_CONSTRAINT_PARAMS)):
        if len(chosen) == wanted:
            break
        if not any(rule in group and group & set(chosen) for group in _EXCLUSIVE):
            chosen.append(rule)
    constraints = [Constraint(rule, _CONSTRAINT_PARAMS[rule](rng)) for rule in chosen]
    prompt = " ".join([request] + [c.describe() for c in constraints])
    return Query(f"instructions-{index:06d}", "instructions", _user(prompt),
                 {"kind": "instructions", "constraints": [c.to_dict() for c in constraints]},
                 f"qwen25.data.queries instruction templates seed={seed} index={index}")


_RECORDS = {
    "book": {"title": "string", "author": "string", "year": "integer", "genres": "array"},
    "city": {"name": "string", "country": "string", "population": "integer", "coastal": "boolean"},
    "recipe": {"name": "string", "servings": "integer", "ingredients": "array", "vegetarian": "boolean"},
    "planet": {"name": "string", "moons": "integer", "radius_km": "number", "has_rings": "boolean"},
}
_TABLES = [("famous rivers", 3, ["River", "Continent", "Length (km)"]),
           ("common fruits", 4, ["Fruit", "Color", "Season"]),
           ("programming languages", 3, ["Language", "Year", "Paradigm"]),
           ("chemical elements", 5, ["Element", "Symbol", "Atomic number"])]


def structured_query(rng: random.Random, index: int, seed: int) -> Query:
    if index % 2 == 0:
        kind, fields = rng.choice(sorted(_RECORDS.items()))
        schema = {"type": "object", "required": sorted(fields), "additionalProperties": False,
                  "properties": {k: ({"type": "array", "items": {"type": "string"}} if t == "array" else {"type": t})
                                 for k, t in fields.items()}}
        prompt = (f"Describe a {kind} as a JSON object that satisfies this JSON Schema:\n"
                  f"```json\n{json.dumps(schema, indent=2)}\n```\nReply with the JSON only.")
        verifier = {"kind": "json_schema", "schema": schema}
    else:
        subject, rows, columns = rng.choice(_TABLES)
        prompt = f"Make a markdown table of {rows} {subject} with the columns {', '.join(columns)}."
        verifier = {"kind": "table", "columns": columns, "min_rows": rows}
    return Query(f"structured-{index:06d}", "structured", _user(prompt), verifier,
                 f"qwen25.data.queries structured templates seed={seed} index={index}")


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def logic_query(rng: random.Random, index: int, seed: int) -> Query:
    if index % 2 == 0:
        n = rng.randint(2, 200)
        prompt = f"True or false: {n} is a prime number. Think it through, then end with 'The answer is true' or " \
                 f"'The answer is false'."
        verifier = {"kind": "true_false", "gold": _is_prime(n)}
    else:
        d = rng.randint(3, 9)
        right = d * rng.randint(3, 30)
        wrong = set()
        while len(wrong) < 3:
            x = rng.randint(10, 270)
            if x % d:
                wrong.add(x)
        options = sorted(wrong) + [right]
        rng.shuffle(options)
        listed = " ".join(f"({letter}) {x}" for letter, x in zip("ABCD", options))
        prompt = f"Which of these numbers is divisible by {d}? {listed}\nEnd with 'The answer is (X)'."
        verifier = {"kind": "choice", "gold": "ABCD"[options.index(right)], "options": "ABCD"}
    return Query(f"logic-{index:06d}", "logic", _user(prompt), verifier,
                 f"qwen25.data.queries logic templates seed={seed} index={index}")


BUILDERS: dict[str, Callable[[random.Random, int, int], Query]] = {
    "math": math_query, "code": code_query, "instructions": instruction_query, "structured": structured_query,
    "logic": logic_query,
}


def build_queries(counts: dict[str, int], seed: int = 0) -> list[Query]:
    """`counts[family]` queries of each family; the same seed gives the same queries."""
    queries = []
    for family, n in counts.items():
        if family not in BUILDERS:
            raise ValueError(f"unknown query family {family!r}; known: {', '.join(FAMILIES)}")
        rng = random.Random(f"{seed}:{family}")
        queries += [BUILDERS[family](rng, i, seed) for i in range(n)]
    return queries


def write_queries(queries: list[Query], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(q.to_dict(), ensure_ascii=False) + "\n" for q in queries))


def read_queries(path: str | Path) -> list[Query]:
    queries, seen = [], set()
    for line_no, obj in iter_jsonl_lines(path):
        try:
            query = Query(**obj)
        except TypeError as e:
            raise ValueError(f"{path}:{line_no}: not a query record ({e})") from None
        if query.id in seen:
            raise ValueError(f"{path}:{line_no}: duplicate query id {query.id!r}")
        seen.add(query.id)
        queries.append(query)
    return queries
