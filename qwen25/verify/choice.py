"""Multiple-choice letters and true/false answers, for logical reasoning queries."""

from __future__ import annotations

import re

from qwen25.verify.verdict import Verdict

_TRUE = ("true", "yes", "correct", "正确", "对", "是")
_FALSE = ("false", "no", "incorrect", "错误", "错", "否")


def extract_choice(response: str, options: str = "ABCD") -> str | None:
    """The chosen letter: an explicit "answer is (B)" / "Answer: B" / \\boxed{B} wins (the last one), else a
    lone letter on the last line that has one, else None."""
    letters = re.escape(options)
    explicit = re.findall(rf"(?:answer\s*(?:is|:)?\s*:?\s*\**\s*\(?|\\boxed\{{\s*\(?|答案\s*(?:是|为)?\s*[：:]?\s*\(?)"
                          rf"([{letters}])(?![A-Za-z])", response, re.IGNORECASE)
    explicit = [c for c in explicit if c.upper() in options]
    if explicit:
        return explicit[-1].upper()
    for line in reversed([line for line in response.splitlines() if line.strip()]):
        lone = re.findall(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", line)
        if len(set(lone)) == 1:
            return lone[0]
        if lone:
            return None  # a line naming several options is not an answer
    return None


def verify_choice(response: str, gold: str, options: str = "ABCD") -> Verdict:
    if gold not in options or len(gold) != 1:
        raise ValueError(f"verify_choice: gold {gold!r} is not one of the options {options!r}")
    choice = extract_choice(response, options)
    if choice is None:
        return Verdict(False, "no choice found", details={"extracted": None})
    return Verdict(choice == gold, f"chose {choice}, gold {gold}", details={"extracted": choice})


def extract_true_false(response: str) -> bool | None:
    """True/False from the last answer phrase, else the first word of the response, else None."""
    words = "|".join(map(re.escape, _TRUE + _FALSE))
    phrase = re.findall(rf"(?:answer\s*(?:is|:)?\s*:?|答案\s*(?:是|为)?\s*[：:]?)\s*\**\s*({words})(?![A-Za-z])",
                        response, re.IGNORECASE)
    if phrase:
        return phrase[-1].lower() in _TRUE
    first = re.match(rf"\s*\**\s*({words})(?![A-Za-z])", response, re.IGNORECASE)
    if first:
        return first.group(1).lower() in _TRUE
    return None


def verify_true_false(response: str, gold: bool) -> Verdict:
    value = extract_true_false(response)
    if value is None:
        return Verdict(False, "no true/false answer found", details={"extracted": None})
    return Verdict(value == gold, f"answered {value}, gold {gold}", details={"extracted": value})
