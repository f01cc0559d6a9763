"""Code benchmarks' completions checked by running them in `qwen25.verify`'s sandbox.

HumanEval: the problem's prompt, the completion (which continues it, also in chat through the response
prefix), then the problem's `check(entry_point)`; MBPP: the completion, then the item's assert lines. Each
program runs in a fresh sandbox (no network, limits, temporary directory); several at once in threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from qwen25.verify.code_tests import verify_python_asserts, verify_python_check
from qwen25.verify.sandbox import Limits
from qwen25.verify.verdict import Verdict

CodeChecker = Callable[[str, dict, str, float], Verdict]  # (task name, item reference, completion, timeout)


def check_completion(task: str, reference: dict, completion: str, timeout: float = 10.0) -> Verdict:
    """Whether `completion` passes the item's tests; `timeout`: CPU seconds (wall clock: three times that)."""
    limits = Limits(cpu_seconds=timeout, wall_seconds=3 * timeout)
    if task == "humaneval":
        return verify_python_check(reference["prompt"] + completion, reference["test"], reference["entry_point"],
                                   limits)
    return verify_python_asserts(completion, [reference["tests"]], limits)


def check_all(task: str, jobs: Sequence[tuple[dict, str]], timeout: float,
              checker: CodeChecker = check_completion) -> list[Verdict]:
    """Verdicts of (reference, completion) pairs in order, up to the CPU count running at once."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: checker(task, job[0], job[1], timeout), jobs))
