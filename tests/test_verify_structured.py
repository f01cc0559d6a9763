"""JSON Schema and markdown-table checks, multiple-choice letters and true/false answers."""

from __future__ import annotations

import pytest

from qwen25.verify.choice import extract_choice, extract_true_false, verify_choice, verify_true_false
from qwen25.verify.structured import check_json_schema, check_markdown_table

SCHEMA = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"type": "string"}}}}


def test_json_schema_accepts_and_rejects():
    assert check_json_schema('```json\n{"name": "Ada", "age": 36, "tags": ["x"]}\n```', SCHEMA).passed
    v = check_json_schema('{"name": "Ada", "age": -1}', SCHEMA)
    assert not v.passed and "age" in v.reason and "minimum" in v.reason
    v = check_json_schema('{"name": "Ada", "age": 3, "extra": 1}', SCHEMA)
    assert not v.passed and "extra" in v.reason
    v = check_json_schema('{"name": "Ada", "tags": [1]}', SCHEMA)
    assert not v.passed
    v = check_json_schema("name: Ada", SCHEMA)
    assert not v.passed and v.status == "error" and "not valid JSON" in v.reason


def test_invalid_schema_is_a_clear_error():
    with pytest.raises(ValueError, match="schema itself is invalid"):
        check_json_schema("{}", {"type": "objekt"})


TABLE = """Here is the table:

| Name | Year |
|------|-----:|
| Ada  | 1815 |
| Alan | 1912 |

Done."""


def test_markdown_table():
    assert check_markdown_table(TABLE, ["name", "year"], min_rows=2).passed
    assert not check_markdown_table(TABLE, ["name", "born"]).passed
    assert not check_markdown_table(TABLE, ["name", "year"], min_rows=3).passed
    assert not check_markdown_table(TABLE, ["name", "year"], max_rows=1).passed
    ragged = "| a | b |\n|---|---|\n| 1 |\n"
    assert "row 0" in check_markdown_table(ragged, ["a", "b"]).reason
    assert not check_markdown_table("a, b\n1, 2", ["a", "b"]).passed


@pytest.mark.parametrize("response,choice", [
    ("The answer is (B).", "B"),
    ("Answer: C", "C"),
    ("After checking, \\boxed{D}", "D"),
    ("A is wrong because ...\nB is wrong too.\nSo the answer is **A**", "A"),
    ("Options A and C look close.\n(C)", "C"),
    ("答案是 B", "B"),
    ("Both A and B seem plausible.", None),
    ("I am not sure.", None),
])
def test_extract_choice(response, choice):
    assert extract_choice(response) == choice


def test_verify_choice():
    assert verify_choice("The answer is (B).", "B").passed
    assert not verify_choice("The answer is (B).", "C").passed
    assert not verify_choice("no idea", "C").passed
    with pytest.raises(ValueError, match="not one of the options"):
        verify_choice("A", "E")


@pytest.mark.parametrize("response,value", [
    ("True. Because all men are mortal.", True),
    ("The statement is tricky; the answer is false.", False),
    ("**No**, it does not follow.", False),
    ("答案：正确", True),
    ("It depends.", None),
])
def test_true_false(response, value):
    assert extract_true_false(response) is value


def test_verify_true_false():
    assert verify_true_false("Answer: yes", True).passed
    assert not verify_true_false("Answer: yes", False).passed
    assert not verify_true_false("maybe", True).passed
