"""Hundreds of system prompts from templates (report §4.1: varied system prompts keep the model following
them), attached to queries so the same verified-response pipeline trains on them. Some system prompts carry a
verifiable rule (how to start or end, a postscript); a response is then kept only when it passes both the
query's own verifier and that rule (verifier kind `all_of`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from qwen25.data.queries import Query
from qwen25.verify.instructions import Constraint

PERSONAS = ["a helpful assistant", "a patient math tutor", "a senior software engineer", "a friendly teacher",
            "a concise technical writer", "a careful research assistant", "a librarian", "a science journalist",
            "a coding mentor", "an exam coach", "a data analyst", "a university lecturer", "a study buddy",
            "a customer support agent", "a meticulous code reviewer", "an encyclopedia editor",
            "a private tutor for high-school students", "an assistant for busy professionals",
            "a bilingual assistant", "a puzzle enthusiast"]
STYLES = ["Be concise.", "Explain your reasoning clearly.", "Use a warm, encouraging tone.",
          "Prefer short paragraphs.", "Avoid jargon unless it is needed.", "Be precise and formal."]
RULES = [None,
         Constraint("starts_with", {"phrase": "Sure."}),
         Constraint("starts_with", {"phrase": "Let's work through this."}),
         Constraint("ends_with", {"phrase": "Hope this helps!"}),
         Constraint("postscript", {"marker": "P.S."})]


def catalog() -> list[tuple[str, Constraint | None]]:
    """Every templated system prompt with its rule (None: nothing to check): persona x style x rule."""
    out = []
    for persona, style, rule in itertools.product(PERSONAS, STYLES, RULES):
        text = f"You are {persona}. {style}"
        out.append((text + (f" {rule.describe()}" if rule else ""), rule))
    return out


def with_system_prompts(queries: list[Query], share: float, seed: int = 0) -> list[Query]:
    """Give about `share` of the queries (chosen by the seed) a system prompt from the catalog; a prompt's rule
    joins the query's verifier. Queries that already have a system message are left as they are."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share of queries with a system prompt must be in [0, 1], got {share}")
    prompts = catalog()
    rng = random.Random(f"{seed}:system_prompts")
    out = []
    for query in queries:
        pick, chosen = rng.random(), rng.randrange(len(prompts))
        if pick >= share or query.messages[0]["role"] == "system":
            out.append(query)
            continue
        text, rule = prompts[chosen]
        verifier = query.verifier
        if rule is not None:
            verifier = {"kind": "all_of", "verifiers": [query.verifier,
                                                        {"kind": "instructions", "constraints": [rule.to_dict()]}]}
        out.append(replace(query, messages=[{"role": "system", "content": text}] + query.messages, verifier=verifier,
                           source=f"{query.source}; system prompt {chosen} of {len(prompts)} (seed={seed})"))
    return out
