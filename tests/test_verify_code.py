"""Code verification through the sandbox: passing, failing, crashing, slow and cheating solutions."""

from __future__ import annotations

from qwen25.verify.code_tests import extract_code, verify_io, verify_python_asserts, verify_python_check
from qwen25.verify.sandbox import Limits

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]
QUICK = Limits(cpu_seconds=2, wall_seconds=4)


def test_extract_code_prefers_tagged_block_defining_the_entry_point():
    response = ("Here you go:\n```python\ndef helper():\n    pass\n```\nand\n```py\ndef add(a, b):\n    return a+b\n```\n"
                "Usage:\n```python\nprint(add(1, 2))\n```")
    assert extract_code(response, "python", entry_point="add") == "def add(a, b):\n    return a+b\n"
    assert extract_code(response, "python").startswith("def helper")
    assert extract_code("```\nint main(){}\n```", "c") == "int main(){}\n"
    assert extract_code("def f(): return 1", "python") == "def f(): return 1"
    assert extract_code("```python\ndef f():\n    return 1", "python") == "def f():\n    return 1"  # unclosed fence


def test_passing_solution():
    v = verify_python_asserts(ADD, ADD_TESTS)
    assert v.passed and v.status == "pass" and v.details["tests"] == [None, None, None]


def test_wrong_answer_fails_with_the_failing_test():
    v = verify_python_asserts("def add(a, b):\n    return a - b\n", ADD_TESTS)
    assert not v.passed and v.status == "fail"
    assert "test 0" in v.reason and v.details["tests"][2].startswith("TypeError")


def test_exception_in_solution_is_an_error():
    v = verify_python_asserts("def add(a, b):\n    return a + b + None\n", ADD_TESTS)
    assert v.status == "error" and "TypeError" in v.reason


def test_solution_failing_at_import_is_an_error():
    v = verify_python_asserts("import nonexistent_module_xyz\n" + ADD, ADD_TESTS)
    assert v.status == "error" and "ModuleNotFoundError" in v.reason


def test_infinite_loop_is_a_timeout():
    v = verify_python_asserts("def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, limits=QUICK)
    assert v.status == "timeout" and not v.passed, v


def test_memory_hog_is_an_error():
    v = verify_python_asserts("def add(a, b):\n    return len(bytearray(4 * 1024**3))\n", ADD_TESTS,
                              limits=Limits(memory_bytes=512 << 20))
    assert v.status == "error" and "MemoryError" in v.reason


def test_cheating_solutions_do_not_pass():
    fake_report = "print('\\n@@qwen25-results-0000@@[null, null, null]')\n" + "def add(a, b):\n    return 0\n"
    assert not verify_python_asserts(fake_report, ADD_TESTS).passed
    early_exit = "import sys\nsys.exit(0)\n" + ADD
    v = verify_python_asserts(early_exit, ADD_TESTS)
    assert not v.passed and v.status == "error"
    hard_exit = "import os\nos._exit(0)\n"
    assert not verify_python_asserts(hard_exit, ADD_TESTS).passed
    reads_marker = "import sys\nprint(sys.stdin.read())\n" + ADD  # the marker is gone from stdin
    v = verify_python_asserts(reads_marker, ADD_TESTS)
    assert v.passed  # it still passes honestly: the tests are right


def test_humaneval_style_check():
    test_code = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"
    assert verify_python_check(ADD, test_code, "add").passed
    assert not verify_python_check("def add(a, b):\n    return a * b\n", test_code, "add").passed


def test_io_cases_python_and_c():
    cases = [("1 2\n", "3\n"), ("10 -4\n", "6")]
    assert verify_io("a, b = map(int, input().split())\nprint(a + b)", cases).passed
    wrong = verify_io("a, b = map(int, input().split())\nprint(a * b)", cases)
    assert wrong.status == "fail" and "0/2" in wrong.reason
    c = '#include <stdio.h>\nint main(){long a,b; scanf("%ld %ld",&a,&b); printf("%ld\\n", a+b); return 0;}'
    assert verify_io(c, cases, language="c").passed
    broken = verify_io("int main( {", cases, language="c")
    assert broken.status == "error" and "compile" in broken.reason
    slow = verify_io("while True: pass", cases[:1], limits=QUICK)
    assert slow.status == "timeout"
    crash = verify_io("raise SystemExit(2)", cases[:1])
    assert crash.status == "error" and "exit code 2" in crash.reason
