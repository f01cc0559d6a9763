"""Our math answer checker against math-verify 0.9.0 on the hand-made cases of tests/math_answer_cases.py.

    .venv/bin/pip install math-verify==0.9.0   # only for this comparison
    .venv/bin/python bench/compare_math_verify.py

math-verify gets the whole response (it does its own extraction) and the reference in `$...$`, as its README
shows for gold answers. Prints accuracy, per-case time, and every case where either checker is wrong.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from qwen25.verify.math_answers import verify_math


def load_cases() -> dict[str, list[tuple[str, str, bool]]]:
    path = Path(__file__).parents[1] / "tests" / "math_answer_cases.py"
    spec = importlib.util.spec_from_file_location("math_answer_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"development cases": module.CASES, "held-out cases": module.HELD_OUT}


def main() -> None:
    from math_verify import parse, verify

    verify_math("\\boxed{x+1}", "1+x")  # start the symbolic worker before timing
    checkers = {
        "qwen25.verify": lambda resp, ref: verify_math(resp, ref).passed,
        "math-verify 0.9.0": lambda resp, ref: bool(verify(parse(f"${ref}$"), parse(resp))),
    }
    for title, cases in load_cases().items():
        compare(title, cases, checkers)


def compare(title: str, cases: list[tuple[str, str, bool]], checkers: dict) -> None:
    wrong: dict[str, list] = {}
    print(f"\n## {title}: {len(cases)} cases ({sum(c[2] for c in cases)} equal, {sum(not c[2] for c in cases)} not equal)\n")
    print("| checker | correct | false accepts | false rejects | ms/case |")
    print("|---|---|---|---|---|")
    for name, check in checkers.items():
        start = time.perf_counter()
        got = [check(resp, ref) for resp, ref, _ in cases]
        ms = (time.perf_counter() - start) / len(cases) * 1000
        wrong[name] = [(c, g) for c, g in zip(cases, got) if g != c[2]]
        false_accepts = sum(g and not c[2] for c, g in wrong[name])
        print(f"| {name} | {len(cases) - len(wrong[name])}/{len(cases)} | {false_accepts} | "
              f"{len(wrong[name]) - false_accepts} | {ms:.1f} |")
    for name, cases_wrong in wrong.items():
        for (resp, ref, expected), _ in cases_wrong:
            print(f"\n{name} wrong (expected {expected}): response {resp!r}, reference {ref!r}")


if __name__ == "__main__":
    main()
