"""Verification code written by a model (report §4.1, instruction following; the AutoIF recipe): a model
writes an instruction, a function `evaluate(response) -> bool` that checks it, and test cases for that
function. The function is kept only when it passes its own tests in the sandbox; responses to the
instruction are then kept only when the kept function, again in the sandbox, accepts them.

The expected model output (see `VERIFICATION_FORMAT`, which prompts include):

    Instruction: <the instruction>
    ```python
    def evaluate(response: str) -> bool:
        ...
    ```
    ```json
    [{"response": "<a response that follows the instruction>", "result": true},
     {"response": "<one that does not>", "result": false}]
    ```

Test cases may instead be `assert evaluate("...") ...` lines in a second python block. JSON cases must
include at least one accepted and one rejected response, so `return True` cannot pass its own tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from qwen25.verify.code_tests import verify_python_asserts
from qwen25.verify.sandbox import Limits
from qwen25.verify.verdict import Verdict

VERIFICATION_FORMAT = """Write an instruction, a Python function `evaluate(response: str) -> bool` that returns True
exactly when a response follows the instruction, and test cases for the function, in this format:

Instruction: <the instruction>
```python
def evaluate(response: str) -> bool:
    ...
```
```json
[{"response": "<a response that follows the instruction>", "result": true},
 {"response": "<a response that does not>", "result": false}]
```"""

_BLOCK = re.compile(r"```[ \t]*(\w*)[^\n]*\n(.*?)```", re.DOTALL)
_CHECK_LIMITS = Limits(cpu_seconds=5, wall_seconds=10, memory_bytes=512 << 20)


@dataclass
class VerificationSpec:
    instruction: str
    function: str  # source defining evaluate(response) -> bool
    cases: list[tuple[str, bool]] = field(default_factory=list)
    asserts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"instruction": self.instruction, "function": self.function,
                "cases": [{"response": r, "result": ok} for r, ok in self.cases], "asserts": self.asserts}

    @classmethod
    def from_dict(cls, d: dict) -> VerificationSpec:
        return cls(d["instruction"], d["function"], [(c["response"], c["result"]) for c in d["cases"]], d["asserts"])


def parse_verification(text: str) -> VerificationSpec:
    """Read a model's instruction, evaluate() and test cases; ValueError names the part that is missing."""
    blocks = [(tag.lower(), body) for tag, body in _BLOCK.findall(text)]
    instruction = re.search(r"(?:^|\n)\s*(?:#+\s*)?\**instruction\**\s*:?\**\s*(.+?)(?=\n\s*```|\Z)", text,
                            re.IGNORECASE | re.DOTALL)
    if not instruction or not instruction.group(1).strip():
        raise ValueError("verification output: no 'Instruction:' line before the code")
    functions = [body for tag, body in blocks if tag in ("python", "py", "") and re.search(r"def\s+evaluate\s*\(", body)]
    if not functions:
        raise ValueError("verification output: no python block defining evaluate(response)")
    cases: list[tuple[str, bool]] = []
    for tag, body in blocks:
        if tag == "json":
            try:
                items = json.loads(body)
            except ValueError as e:
                raise ValueError(f"verification output: test cases are not valid JSON ({e})") from None
            if not isinstance(items, list):
                raise ValueError("verification output: test cases must be a JSON list")
            for i, item in enumerate(items):
                if not (isinstance(item, dict) and isinstance(item.get("response"), str)
                        and isinstance(item.get("result"), bool)):
                    raise ValueError(f"verification output: test case {i} needs a string 'response' and a "
                                     f"boolean 'result'")
                cases.append((item["response"], item["result"]))
    asserts = [line.strip() for tag, body in blocks if tag in ("python", "py") and body not in functions
               for line in body.splitlines() if line.strip().startswith("assert ")]
    if not cases and not asserts:
        raise ValueError("verification output: no test cases (a json block or assert lines)")
    if cases and {ok for _, ok in cases} != {True, False}:
        raise ValueError("verification output: test cases need at least one accepted and one rejected response")
    return VerificationSpec(instruction.group(1).strip(), functions[0], cases, asserts)


def _case_test(response: str, expected: bool) -> str:
    return (f"_got = evaluate({response!r})\n"
            f"assert isinstance(_got, bool), f'evaluate returned {{_got!r}}, not a bool'\n"
            f"assert _got is {expected}, f'evaluate returned {{_got}}, expected {expected}'")


def vet_verification(spec: VerificationSpec, limits: Limits = _CHECK_LIMITS) -> Verdict:
    """Keep the function only when every test case and assert passes in the sandbox."""
    tests = [_case_test(r, ok) for r, ok in spec.cases] + spec.asserts
    verdict = verify_python_asserts(spec.function, tests, limits)
    verdict.reason = f"verification function {'kept' if verdict.passed else 'dropped'}: {verdict.reason}"
    return verdict


def check_responses(spec: VerificationSpec, responses: Sequence[str], limits: Limits = _CHECK_LIMITS) -> list[Verdict]:
    """Run a kept evaluate() on each response in the sandbox; accepted = returned True. All responses go in one
    run; when that run times out, each is rerun alone so one slow response does not fail the others."""
    if not responses:
        return []
    tests = [_case_test(r, True) for r in responses]
    batch = verify_python_asserts(spec.function, tests, limits)
    if batch.status == "timeout" and len(responses) > 1:
        return [check_responses(spec, [r], limits)[0] for r in responses]
    if "tests" not in batch.details:  # the function did not even load: every response fails the same way
        return [Verdict(False, batch.reason, batch.status, {"run": batch.details}) for _ in responses]
    verdicts = []
    for outcome in batch.details["tests"]:
        if outcome is None:
            verdicts.append(Verdict(True, "evaluate() accepted the response"))
        elif outcome.startswith("AssertionError: evaluate returned False"):
            verdicts.append(Verdict(False, "evaluate() rejected the response"))
        else:
            verdicts.append(Verdict(False, f"evaluate() failed: {outcome}", "error"))
    return verdicts
