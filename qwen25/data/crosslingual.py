"""Cross-lingual queries (report §4.1: transfer of instruction data across languages): translate a query's
instruction into another language, translate it back, and keep the translation only when the back-translation
agrees with the original (every number kept, enough words in common) and the translation is in the target
language. A kept query keeps the original verifier (answers to math and code do not depend on the language)
and adds a rule that the response be in the target language; `qwen25 data sft-build` then samples, verifies
and keeps responses as for any other query.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from qwen25.data.curation import query_seed
from qwen25.data.generators import Generator
from qwen25.data.queries import Query
from qwen25.verify.instructions import LANGUAGES, Constraint, detect_language

NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "zh": "Chinese", "ja": "Japanese",
         "ko": "Korean", "ru": "Russian", "ar": "Arabic", "el": "Greek", "hi": "Hindi", "th": "Thai"}
PROMPT = ("Translate the following text into {language}. Keep every number, formula, name and code identifier "
          "exactly as it is. Reply with the translation only.\n\n{text}")


def _numbers(text: str) -> Counter:
    return Counter(re.findall(r"\d+(?:\.\d+)?", text))


def _tokens(text: str) -> Counter:
    """Words of alphabetic scripts, single characters of CJK scripts (which do not separate words)."""
    return Counter(re.findall(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]|[^\W\d_]+", text.lower()))


def agreement(original: str, back: str) -> float:
    """Token F1 of the back-translation against the original instruction."""
    a, b = _tokens(original), _tokens(back)
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(b.values()), common / sum(a.values())
    return 2 * precision * recall / (precision + recall)


def translation_problems(original: str, translated: str, back: str, language: str, min_agreement: float) -> list[str]:
    """Why a translation cannot be used (empty when it can)."""
    problems = []
    found = detect_language(translated)
    if found != language:
        problems.append(f"translation detected as {found}, not {language}")
    if _numbers(original) != _numbers(back) or _numbers(original) != _numbers(translated):
        problems.append("numbers changed")
    score = agreement(original, back)
    if score < min_agreement:
        problems.append(f"back-translation agreement {score:.2f} < {min_agreement}")
    return problems


def crosslingual_queries(queries: Sequence[Query], generator: Generator, languages: Sequence[str], seed: int = 0,
                         min_agreement: float = 0.5) -> tuple[list[Query], list[dict]]:
    """Each query's last user message translated into each language (one seeded sample each way).
    Returns the kept queries and one judgement per (query, language)."""
    for language in languages:
        if language not in LANGUAGES or language not in NAMES:
            raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    jobs = [(q, lang) for q in queries for lang in languages]
    seeds = [query_seed(seed, f"{q.id}:{lang}") for q, lang in jobs]
    texts = [q.messages[-1]["content"] for q, _ in jobs]
    translated = [out[0].strip() for out in generator(
        [[{"role": "user", "content": PROMPT.format(language=NAMES[lang], text=t)}] for t, (_, lang) in
         zip(texts, jobs)], 1, seeds)]
    back = [out[0].strip() for out in generator(
        [[{"role": "user", "content": PROMPT.format(language=NAMES[detect_language(t) or "en"], text=tr)}]
         for t, tr in zip(texts, translated)], 1, [s + 1 for s in seeds])]
    kept, judged = [], []
    for (query, lang), text, tr, bt, s in zip(jobs, texts, translated, back, seeds):
        problems = translation_problems(text, tr, bt, lang, min_agreement)
        judged.append({"query_id": query.id, "language": lang, "seed": s, "translation": tr,
                       "back_translation": bt, "agreement": agreement(text, bt), "problems": problems})
        if problems:
            continue
        rule = Constraint("language", {"language": lang})
        kept.append(replace(
            query, id=f"{query.id}-{lang}", family=f"{query.family}_{lang}",
            messages=query.messages[:-1] + [{"role": "user", "content": tr}],
            verifier={"kind": "all_of", "verifiers": [query.verifier,
                                                      {"kind": "instructions", "constraints": [rule.to_dict()]}]},
            source=f"{query.source}; translated to {lang} by {generator.name}, seed={s}, back-translation "
                   f"agreement {agreement(text, bt):.2f}",
            reference=""))
    return kept, judged
