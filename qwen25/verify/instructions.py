"""Instruction-following constraints in the style of IFEval: each rule renders its instruction text and checks
a response against it, so one table drives both the templated queries and the verifier.

A constraint is a rule name and its parameters, e.g. `Constraint("word_count", {"relation": "at least",
"n": 100})`. `check_constraints` passes a response only when it satisfies every constraint.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qwen25.verify.verdict import Verdict

RELATIONS = ("at least", "at most")


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "at least":
        return count >= n
    if relation == "at most":
        return count <= n
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def words(text: str) -> list[str]:
    """Words as IFEval counts them: runs of letters, digits and apostrophes; each CJK character counts as one."""
    return re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+(?:'[^\W_]+)*", text)


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?。！？])\s+|(?<=[。！？])", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _word_count(response: str, relation: str, n: int) -> bool:
    return _compare(len(words(response)), relation, n)


def _sentence_count(response: str, relation: str, n: int) -> bool:
    return _compare(len(sentences(response)), relation, n)


def _paragraph_count(response: str, n: int) -> bool:
    return len(paragraphs(response)) == n


def _character_count(response: str, relation: str, n: int) -> bool:
    return _compare(len(re.sub(r"\s", "", response)), relation, n)


def _contains_word(response: str, word: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", response, re.IGNORECASE))


def _include_keywords(response: str, keywords: list[str]) -> bool:
    return all(_contains_word(response, k) for k in keywords)


def _keyword_frequency(response: str, keyword: str, relation: str, n: int) -> bool:
    return _compare(_contains_word(response, keyword), relation, n)


def _forbidden_words(response: str, forbidden: list[str]) -> bool:
    return not any(_contains_word(response, w) for w in forbidden)


def _letter_frequency(response: str, letter: str, relation: str, n: int) -> bool:
    return _compare(response.lower().count(letter.lower()), relation, n)


def strip_code_fence(text: str) -> str:
    m = re.fullmatch(r"\s*```[\w-]*\s*\n(.*?)\n?```\s*", text, re.DOTALL)
    return m.group(1) if m else text.strip()


def _json_format(response: str) -> bool:
    try:
        json.loads(strip_code_fence(response))
    except ValueError:
        return False
    return True


def _bullet_lines(response: str) -> list[str]:
    return re.findall(r"^\s*[*-]\s+\S.*$", response, re.MULTILINE)


def _bullet_count(response: str, n: int) -> bool:
    return len(_bullet_lines(response)) == n


def _numbered_list_count(response: str, n: int) -> bool:
    return len(re.findall(r"^\s*\d+[.)]\s+\S", response, re.MULTILINE)) == n


def _title(response: str) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", response))


def _markdown_heading(response: str) -> bool:
    lines = [line for line in response.splitlines() if line.strip()]
    return bool(lines) and re.match(r"#{1,6} \S", lines[0]) is not None


def _highlighted_sections(response: str, n: int) -> bool:
    return len([h for h in re.findall(r"(?<!\*)\*([^\n*]+)\*(?!\*)", response) if h.strip()]) >= n


def _section_count(response: str, n: int, marker: str = "Section") -> bool:
    parts = re.split(rf"(?:^|\n)\s*{re.escape(marker)}\s+\d+", response)
    return len(parts) - 1 == n and all(p.strip() for p in parts[1:])


def _letters(response: str) -> list[str]:
    return [c for c in response if c.isalpha()]


def _all_uppercase(response: str) -> bool:
    cased = [c for c in _letters(response) if c.lower() != c.upper()]
    return bool(cased) and all(c.isupper() for c in cased)


def _all_lowercase(response: str) -> bool:
    cased = [c for c in _letters(response) if c.lower() != c.upper()]
    return bool(cased) and all(c.islower() for c in cased)


def _capital_words(response: str, relation: str, n: int) -> bool:
    return _compare(len([w for w in re.findall(r"\b[A-Za-z]+\b", response) if len(w) > 1 and w.isupper()]),
                    relation, n)


_SCRIPTS = {
    "han": r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", "kana": r"[\u3040-\u30ff]",
    "hangul": r"[\uac00-\ud7af\u1100-\u11ff]", "cyrillic": r"[\u0400-\u04ff]", "arabic": r"[\u0600-\u06ff]",
    "greek": r"[\u0370-\u03ff]", "devanagari": r"[\u0900-\u097f]", "thai": r"[\u0e00-\u0e7f]",
    "latin": r"[A-Za-z\u00c0-\u024f]",
}
_STOPWORDS = {
    "en": {"the", "and", "of", "to", "is", "in", "that", "it", "for", "with", "as", "are", "this", "be", "on"},
    "fr": {"le", "la", "les", "et", "de", "des", "est", "une", "un", "que", "pour", "dans", "en", "du", "pas"},
    "de": {"der", "die", "das", "und", "ist", "nicht", "ein", "eine", "zu", "mit", "den", "von", "auf", "sich"},
    "es": {"el", "la", "los", "las", "y", "de", "que", "es", "en", "un", "una", "por", "con", "para", "del"},
}
LANGUAGES = ("en", "fr", "de", "es", "zh", "ja", "ko", "ru", "ar", "el", "hi", "th")


def script_shares(text: str) -> dict[str, float]:
    """Share of each script among the letters of `text` (kana and Han counted separately)."""
    counts = {name: len(re.findall(pattern, text)) for name, pattern in _SCRIPTS.items()}
    total = sum(counts.values())
    return {name: (c / total if total else 0.0) for name, c in counts.items()}


def detect_language(text: str) -> str | None:
    """A script-based guess: zh/ja/ko/ru/ar/el/hi/th by script, en/fr/de/es by common words; None if unsure."""
    shares = script_shares(text)
    if shares["kana"] >= 0.1:
        return "ja"
    best = max(shares, key=shares.get)
    if shares[best] < 0.5:
        return None
    by_script = {"han": "zh", "hangul": "ko", "cyrillic": "ru", "arabic": "ar", "greek": "el", "devanagari": "hi",
                 "thai": "th"}
    if best in by_script:
        return by_script[best]
    tokens = re.findall(r"[a-zà-ÿ]+", text.lower())
    hits = {lang: sum(t in stop for t in tokens) for lang, stop in _STOPWORDS.items()}
    lang = max(hits, key=hits.get)
    return lang if hits[lang] > 0 and hits[lang] >= 0.05 * len(tokens) else None


def _language(response: str, language: str) -> bool:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return detect_language(response) == language


def _starts_with(response: str, phrase: str) -> bool:
    return response.strip().lower().startswith(phrase.strip().lower())


def _ends_with(response: str, phrase: str) -> bool:
    return response.strip().lower().endswith(phrase.strip().lower())


def _wrap_in_quotes(response: str) -> bool:
    r = response.strip()
    return len(r) > 1 and r[0] == r[-1] == '"'


def _no_commas(response: str) -> bool:
    return "," not in response and "，" not in response


def _placeholders(response: str, n: int) -> bool:
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= n


def _postscript(response: str, marker: str = "P.S.") -> bool:
    return re.search(rf"(?:^|\n)\s*{re.escape(marker)}\s*\S", response) is not None


def _two_responses(response: str) -> bool:
    parts = response.split("******")
    return len(parts) == 2 and all(p.strip() for p in parts) and parts[0].strip() != parts[1].strip()


def _repeat_prompt(response: str, prompt: str) -> bool:
    return response.strip().lower().startswith(prompt.strip().lower())


@dataclass(frozen=True)
class Rule:
    check: Callable[..., bool]  # (response, **params) -> bool
    template: str  # the instruction, formatted with the params


RULES: dict[str, Rule] = {
    "word_count": Rule(_word_count, "Answer with {relation} {n} words."),
    "sentence_count": Rule(_sentence_count, "Your response should contain {relation} {n} sentences."),
    "paragraph_count": Rule(_paragraph_count, "Your response must have exactly {n} paragraphs, separated by "
                                              "blank lines."),
    "character_count": Rule(_character_count, "Your response should contain {relation} {n} characters, not "
                                              "counting whitespace."),
    "include_keywords": Rule(_include_keywords, "Include the keywords {keywords} in your response."),
    "keyword_frequency": Rule(_keyword_frequency, "The word \"{keyword}\" should appear {relation} {n} times."),
    "forbidden_words": Rule(_forbidden_words, "Do not include the words {forbidden} in your response."),
    "letter_frequency": Rule(_letter_frequency, "The letter \"{letter}\" should appear {relation} {n} times."),
    "json_format": Rule(_json_format, "Your entire output should be valid JSON; you may wrap it in a ```json "
                                      "code block."),
    "bullet_count": Rule(_bullet_count, "Your answer must contain exactly {n} bullet points, using markdown "
                                        "bullets such as:\n* This is a point."),
    "numbered_list_count": Rule(_numbered_list_count, "Your answer must be a numbered list of exactly {n} items "
                                                      "(1., 2., ...)."),
    "title": Rule(_title, "Your answer must contain a title, wrapped in double angular brackets, such as "
                          "<<poem of joy>>."),
    "markdown_heading": Rule(_markdown_heading, "Start your answer with a markdown heading (a line beginning "
                                                "with #)."),
    "highlighted_sections": Rule(_highlighted_sections, "Highlight at least {n} sections in your answer with "
                                                        "markdown, i.e. *highlighted section*."),
    "section_count": Rule(_section_count, "Your response must have {n} sections. Mark the beginning of each "
                                          "section with {marker} X, such as: {marker} 1."),
    "all_uppercase": Rule(_all_uppercase, "Your entire response should be in English, and in all capital "
                                          "letters."),
    "all_lowercase": Rule(_all_lowercase, "Your entire response should be in English, and in all lowercase "
                                          "letters. No capital letters are allowed."),
    "capital_words": Rule(_capital_words, "In your response, words with all capital letters should appear "
                                          "{relation} {n} times."),
    "language": Rule(_language, "Your entire response should be in the language with ISO code {language}, no "
                                "other language is allowed."),
    "starts_with": Rule(_starts_with, "Start your response with the phrase \"{phrase}\"."),
    "ends_with": Rule(_ends_with, "Finish your response with this exact phrase: \"{phrase}\". No other words "
                                  "should follow it."),
    "wrap_in_quotes": Rule(_wrap_in_quotes, "Wrap your entire response with double quotation marks."),
    "no_commas": Rule(_no_commas, "In your entire response, refrain from the use of any commas."),
    "placeholders": Rule(_placeholders, "The response must contain at least {n} placeholders represented by "
                                        "square brackets, such as [address]."),
    "postscript": Rule(_postscript, "At the end of your response, please explicitly add a postscript starting "
                                    "with {marker}"),
    "two_responses": Rule(_two_responses, "Give two different responses. Responses and only responses should "
                                          "be separated by 6 asterisk symbols: ******."),
    "repeat_prompt": Rule(_repeat_prompt, "First repeat the request word for word without change, then give "
                                          "your answer."),
}


@dataclass(frozen=True)
class Constraint:
    rule: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"Constraint.rule: unknown rule {self.rule!r}; known: {', '.join(sorted(RULES))}")
        signature = inspect.signature(RULES[self.rule].check)
        try:
            signature.bind("", **self.params)
        except TypeError as e:
            raise ValueError(f"Constraint {self.rule!r}: bad params {self.params}: {e}") from None
        relation = self.params.get("relation")
        if relation is not None and relation not in RELATIONS:
            raise ValueError(f"Constraint {self.rule!r}: relation must be one of {RELATIONS}, got {relation!r}")

    def describe(self) -> str:
        defaults = {name: p.default for name, p in inspect.signature(RULES[self.rule].check).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        values = {**defaults, **self.params}
        values = {k: (", ".join(f'"{x}"' for x in v) if isinstance(v, list) else v) for k, v in values.items()}
        return RULES[self.rule].template.format(**values)

    def check(self, response: str) -> bool:
        return bool(RULES[self.rule].check(response, **self.params))

    def to_dict(self) -> dict:
        return {"rule": self.rule, "params": self.params}


def check_constraints(response: str, constraints: Sequence[Constraint]) -> Verdict:
    """Pass only when every constraint holds; the reason lists the ones that do not."""
    results = {f"{i}:{c.rule}": c.check(response) for i, c in enumerate(constraints)}
    failed = [name for name, ok in results.items() if not ok]
    if failed:
        return Verdict(False, f"failed {len(failed)}/{len(results)}: {', '.join(failed)}", details=results)
    return Verdict(True, f"all {len(results)} constraints hold", details=results)
