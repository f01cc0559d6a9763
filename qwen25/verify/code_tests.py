"""Code verified by running it: unit tests (assert statements or a HumanEval-style `check`) for Python, and
stdin/stdout cases for any sandbox language. Every run goes through the sandbox.

Statuses: "pass" (every test passed), "fail" (an assertion or an output was wrong), "timeout", "error" (the
code raised, crashed, ran out of memory or did not compile; the reason says which).

The assert harness runs the solution and then each test in one process and reports per-test results after a
random marker that it reads from stdin before the solution starts, so a solution that prints a fake report
or exits early does not pass. (A solution that deliberately inspects the harness's frames could still forge
one: the harness shares its process. Treat passing as "passes the tests", not as proof of good faith.)
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence

from qwen25.verify.sandbox import LANGUAGES, Limits, Program, RunResult, run_many, run_program
from qwen25.verify.verdict import Verdict

_LANGUAGE_TAGS = {"python": ("python", "py", "python3"), "c": ("c",), "cpp": ("cpp", "c++", "cc"),
                  "javascript": ("javascript", "js", "node"), "bash": ("bash", "sh", "shell")}
_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[^\n]*\n(.*?)(?:```|$)", re.DOTALL)

_ASSERT_HARNESS = r'''
import json, os, sys
_marker = sys.stdin.readline().strip()
sys.stdin = open(os.devnull)
_tests = json.loads(open("tests.json", encoding="utf-8").read())
_namespace = {"__name__": "solution"}
exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), _namespace)
_results = []
for _test in _tests:
    try:
        exec(compile(_test, "<test>", "exec"), _namespace)
        _results.append(None)
    except AssertionError as e:
        _results.append(("AssertionError: " + str(e)).strip(": ")[:300])
    except BaseException as e:
        _results.append((type(e).__name__ + ": " + str(e))[:300])
sys.stdout.flush()
os.write(1, ("\n" + _marker + json.dumps(_results) + "\n").encode())
os._exit(0)
'''


def extract_code(response: str, language: str = "python", entry_point: str | None = None) -> str:
    """The code in a model response: a fenced block tagged with the language (the last one defining
    `entry_point` when given, else the first), else any fenced block, else the whole response."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
    if not blocks:
        return response.strip()
    tagged = [body for tag, body in blocks if tag in _LANGUAGE_TAGS.get(language, (language,))]
    candidates = tagged or [body for _, body in blocks]
    if entry_point:
        defining = [b for b in candidates if re.search(rf"\b(def|function)\s+{re.escape(entry_point)}\b", b)]
        if defining:
            return defining[-1]
    return candidates[0]


def _run_verdict(run: RunResult) -> Verdict | None:
    """A verdict for runs that ended before the tests could report; None when the tests ran."""
    details = {"run_status": run.status, "stderr": run.stderr[-2000:]}
    if run.status == "timeout":
        return Verdict(False, f"timed out ({run.reason})", "timeout", details)
    if run.status in ("memory_limit", "output_limit", "compile_error", "sandbox_error"):
        return Verdict(False, run.reason, "error", details)
    return None


def verify_python_asserts(code: str, tests: Sequence[str], limits: Limits | None = None,
                          setup: str = "") -> Verdict:
    """Run `code`, then each test (usually one `assert` line) in its namespace."""
    if not tests:
        raise ValueError("verify_python_asserts: no tests given")
    marker = f"@@qwen25-results-{secrets.token_hex(16)}@@"
    program = Program(_ASSERT_HARNESS, stdin=marker + "\n", limits=limits or Limits(),
                      files={"solution.py": code + ("\n" + setup if setup else ""), "tests.json": json.dumps(list(tests))})
    run = run_program(program)
    early = _run_verdict(run)
    if early:
        return early
    report = [line for line in run.stdout.splitlines() if line.startswith(marker)]
    details = {"run_status": run.status, "stderr": run.stderr[-2000:]}  # no timings: verdicts are reproducible
    if not report:
        last = run.stderr.strip().splitlines()[-1:] or [run.reason]
        return Verdict(False, f"the code stopped before the tests ran: {last[0]}", "error", details)
    results = json.loads(report[-1][len(marker):])
    details["tests"] = results
    failed = [(i, r) for i, r in enumerate(results) if r is not None]
    if not failed:
        return Verdict(True, f"{len(results)}/{len(results)} tests passed", "pass", details)
    i, first = failed[0]
    status = "fail" if first.startswith("AssertionError") else "error"
    return Verdict(False, f"{len(results) - len(failed)}/{len(results)} tests passed; test {i}: {first}", status,
                   details)


def verify_python_check(code: str, test_code: str, entry_point: str, limits: Limits | None = None) -> Verdict:
    """HumanEval style: `test_code` defines `check(candidate)`, called with the solution's `entry_point`."""
    return verify_python_asserts(code, [f"{test_code}\ncheck({entry_point})"], limits)


def _same_output(got: str, expected: str) -> bool:
    """Outputs compared line by line, ignoring trailing spaces and trailing blank lines."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]
    return lines(got) == lines(expected)


def verify_io(code: str, cases: Sequence[tuple[str, str]], language: str = "python",
              limits: Limits | None = None, workers: int | None = None) -> Verdict:
    """Run the program once per (stdin, expected stdout) case; pass when every output matches."""
    if language not in LANGUAGES:
        raise ValueError(f"verify_io: unknown language {language!r}; known: {', '.join(sorted(LANGUAGES))}")
    if not cases:
        raise ValueError("verify_io: no cases given")
    runs = run_many([Program(code, language, stdin=stdin, limits=limits or Limits()) for stdin, _ in cases], workers)
    results = []
    for i, (run, (_, expected)) in enumerate(zip(runs, cases)):
        early = _run_verdict(run)
        if early:
            early.reason = f"case {i}: {early.reason}"
            early.details["case"] = i
            return early
        if run.status != "ok":
            last = run.stderr.strip().splitlines()[-1:] or [run.reason]
            return Verdict(False, f"case {i}: {run.reason}: {last[0]}", "error",
                           {"case": i, "stderr": run.stderr[-2000:]})
        results.append(_same_output(run.stdout, expected))
    if all(results):
        return Verdict(True, f"{len(cases)}/{len(cases)} cases matched", "pass", {"cases": results})
    first = results.index(False)
    return Verdict(False, f"{sum(results)}/{len(cases)} cases matched; case {first}: wrong output", "fail",
                   {"cases": results, "first_output": runs[first].stdout[:500]})
