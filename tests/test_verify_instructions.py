"""Every instruction-following rule accepts a response that follows it and rejects one that does not."""

from __future__ import annotations

import pytest

from qwen25.verify.instructions import RULES, Constraint, check_constraints, detect_language

# rule, params, a response that follows the instruction, a response that does not
CASES = [
    ("word_count", {"relation": "at least", "n": 5}, "one two three four five", "one two three"),
    ("word_count", {"relation": "at most", "n": 3}, "it's a dog", "this has too many words"),
    ("sentence_count", {"relation": "at most", "n": 2}, "First one. Second one!", "One. Two. Three."),
    ("sentence_count", {"relation": "at least", "n": 2}, "第一句。第二句。", "Only one sentence here."),
    ("paragraph_count", {"n": 2}, "First paragraph.\n\nSecond paragraph.", "Just one paragraph.\nStill one."),
    ("character_count", {"relation": "at most", "n": 10}, "你好，世界", "this is much longer than ten"),
    ("include_keywords", {"keywords": ["river", "stone"]}, "A Stone by the river.", "A stone by the lake."),
    ("keyword_frequency", {"keyword": "cat", "relation": "at least", "n": 2}, "Cat and cat.", "A cat. Catalog."),
    ("forbidden_words", {"forbidden": ["bad", "awful"]}, "A badge is fine.", "That was awful."),
    ("letter_frequency", {"letter": "z", "relation": "at least", "n": 3}, "Zig zag zoo", "Zig zag"),
    ("json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("bullet_count", {"n": 2}, "Points:\n* one\n- two", "* one\n* two\n* three"),
    ("numbered_list_count", {"n": 3}, "1. a\n2. b\n3) c", "1. a\n2. b"),
    ("title", {}, "<<A Poem>>\nRoses are red.", "A Poem\nRoses are red."),
    ("markdown_heading", {}, "\n# Heading\ntext", "Heading\n# later"),
    ("highlighted_sections", {"n": 2}, "This is *one* and *two*.", "This is **bold** and *one*."),
    ("section_count", {"n": 2, "marker": "Section"}, "Section 1\nintro\nSection 2\nmore", "Section 1\nonly"),
    ("all_uppercase", {}, "HELLO WORLD 42!", "HELLO World"),
    ("all_lowercase", {}, "hello world 42!", "hello World"),
    ("capital_words", {"relation": "at most", "n": 1}, "Only ONE capital word.", "TWO CAPITAL words."),
    ("language", {"language": "zh"}, "这是一个用中文写的回答，内容很简单。", "This answer is written in English."),
    ("language", {"language": "en"}, "This is the answer, and it is in English.", "Das ist die Antwort und sie ist "
                                                                                "nicht auf Englisch."),
    ("language", {"language": "ja"}, "これは日本語の答えです。", "这是中文的回答。"),
    ("language", {"language": "ru"}, "Это ответ на русском языке.", "This is not Russian."),
    ("starts_with", {"phrase": "My answer is"}, "my answer is yes", "Well, my answer is yes"),
    ("ends_with", {"phrase": "Is there anything else?"}, "Done. Is there anything else?",
     "Is there anything else? Done."),
    ("wrap_in_quotes", {}, '"All of it quoted."', 'Not "quoted" fully.'),
    ("no_commas", {}, "No commas here.", "Commas, here."),
    ("placeholders", {"n": 2}, "Send to [name] at [address].", "Send to [name] at home."),
    ("postscript", {"marker": "P.S."}, "Body text.\n\nP.S. See you soon.", "Body text with P.S. inline"),
    ("two_responses", {}, "First answer.\n******\nSecond answer.", "First answer.\n******\nFirst answer."),
    ("repeat_prompt", {"prompt": "Write a haiku about rain."}, "Write a haiku about rain. Rain falls softly...",
     "Rain falls softly..."),
]


@pytest.mark.parametrize("rule,params,accept,reject", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_accepts_and_rejects(rule, params, accept, reject):
    constraint = Constraint(rule, params)
    assert constraint.check(accept), (rule, accept)
    assert not constraint.check(reject), (rule, reject)
    assert constraint.describe()  # every rule renders its instruction


def test_every_rule_has_cases():
    assert {c[0] for c in CASES} == set(RULES)


def test_describe_fills_parameters():
    assert Constraint("word_count", {"relation": "at least", "n": 300}).describe() == "Answer with at least 300 words."
    assert '"a", "b"' in Constraint("include_keywords", {"keywords": ["a", "b"]}).describe()
    assert "P.S." in Constraint("postscript").describe()


def test_bad_constraints_are_rejected_with_the_field():
    with pytest.raises(ValueError, match="unknown rule 'wordcount'"):
        Constraint("wordcount", {})
    with pytest.raises(ValueError, match="word_count"):
        Constraint("word_count", {"n": 3})  # missing relation
    with pytest.raises(ValueError, match="relation must be one of"):
        Constraint("word_count", {"relation": "exactly", "n": 3})
    with pytest.raises(ValueError, match="language must be one of"):
        Constraint("language", {"language": "xx"}).check("text")


def test_check_constraints_needs_all():
    cs = [Constraint("all_lowercase"), Constraint("word_count", {"relation": "at most", "n": 3})]
    assert check_constraints("just three words", cs).passed
    v = check_constraints("Just three words", cs)
    assert not v.passed and "0:all_lowercase" in v.reason and "1:word_count" not in v.reason


def test_detect_language():
    assert detect_language("Le chat est sur la table et il dort.") == "fr"
    assert detect_language("안녕하세요 반갑습니다") == "ko"
    assert detect_language("12345 !!!") is None
