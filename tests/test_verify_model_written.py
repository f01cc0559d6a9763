"""Model-written verification code: kept only when it passes its own tests in the sandbox, then used (in the
sandbox) to accept or reject responses. The "model outputs" here are hand-written, good and broken."""

from __future__ import annotations

import pytest

from qwen25.verify.model_written import check_responses, parse_verification, vet_verification
from qwen25.verify.sandbox import Limits

GOOD = '''Instruction: Answer in at most 5 words, all in lowercase.
```python
def evaluate(response: str) -> bool:
    words = response.split()
    return len(words) <= 5 and response == response.lower()
```
```json
[{"response": "yes it works", "result": true},
 {"response": "Yes it works", "result": false},
 {"response": "this response has far too many words", "result": false}]
```'''

BUGGY = GOOD.replace("len(words) <= 5", "len(words) >= 5")
NOT_BOOL = GOOD.replace("return len(words) <= 5 and response == response.lower()",
                        "return 'yes' if len(words) <= 5 and response == response.lower() else ''")
SYNTAX_ERROR = GOOD.replace("def evaluate(response: str) -> bool:", "def evaluate(response: str) -> bool")
LOOPS = GOOD.replace("words = response.split()", "while True:\n        pass")
ASSERT_STYLE = '''### Instruction
End your answer with the word "done".
```python
def evaluate(response):
    return response.rstrip(". ").endswith("done")
```
```python
assert evaluate("all done.") is True
assert evaluate("done? no") is False
```'''
FAST = Limits(cpu_seconds=1, wall_seconds=3)


def test_parse_good_output():
    spec = parse_verification(GOOD)
    assert spec.instruction == "Answer in at most 5 words, all in lowercase."
    assert spec.function.startswith("def evaluate(response: str) -> bool:")
    assert spec.cases == [("yes it works", True), ("Yes it works", False),
                          ("this response has far too many words", False)]


def test_good_function_is_kept_and_judges_responses():
    spec = parse_verification(GOOD)
    assert vet_verification(spec).passed
    verdicts = check_responses(spec, ["fine by me", "Not Fine", "one two three four five six"])
    assert [v.passed for v in verdicts] == [True, False, False]
    assert verdicts[1].reason == "evaluate() rejected the response"


def test_assert_style_tests():
    spec = parse_verification(ASSERT_STYLE)
    assert spec.instruction == 'End your answer with the word "done".' and len(spec.asserts) == 2
    assert vet_verification(spec).passed


@pytest.mark.parametrize("output,status,words", [
    (BUGGY, "fail", "expected True"),
    (NOT_BOOL, "fail", "not a bool"),
    (SYNTAX_ERROR, "error", "SyntaxError"),
])
def test_broken_functions_are_dropped(output, status, words):
    verdict = vet_verification(parse_verification(output))
    assert not verdict.passed and verdict.status == status and words in verdict.reason, verdict
    assert verdict.reason.startswith("verification function dropped")


def test_looping_function_is_dropped_by_timeout():
    verdict = vet_verification(parse_verification(LOOPS), FAST)
    assert verdict.status == "timeout" and not verdict.passed


def test_one_slow_response_does_not_fail_the_others():
    spec = parse_verification(GOOD.replace("words = response.split()",
                                           "words = response.split()\n    while 'loop' in response:\n        pass"))
    verdicts = check_responses(spec, ["ok then", "loop forever", "Bad Case"], FAST)
    assert [v.status for v in verdicts] == ["pass", "timeout", "fail"]


def test_hostile_function_is_contained(tmp_path):
    target = tmp_path / "owned"
    spec = parse_verification(GOOD.replace(
        "words = response.split()",
        f"open({str(target)!r}, 'w').write('x')\n    words = response.split()"))
    verdict = vet_verification(spec)
    assert not verdict.passed and verdict.status == "error" and not target.exists()


@pytest.mark.parametrize("text,message", [
    ("```python\ndef evaluate(r):\n    return True\n```", "no 'Instruction:'"),
    ("Instruction: be brief\n```python\ndef check(r):\n    return True\n```", "no python block defining evaluate"),
    ("Instruction: be brief\n```python\ndef evaluate(r):\n    return True\n```", "no test cases"),
    ("Instruction: be brief\n```python\ndef evaluate(r):\n    return True\n```\n```json\n[{\"response\": \"a\", "
     "\"result\": true}]\n```", "at least one accepted and one rejected"),
    ("Instruction: be brief\n```python\ndef evaluate(r):\n    return True\n```\n```json\n[{\"response\": 1}]\n```",
     "test case 0"),
    ("Instruction: be brief\n```python\ndef evaluate(r):\n    return True\n```\n```json\n[oops]\n```", "not valid JSON"),
])
def test_unusable_outputs_are_rejected_with_the_missing_part(text, message):
    with pytest.raises(ValueError, match=message):
        parse_verification(text)
