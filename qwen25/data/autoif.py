"""Instruction-following queries whose verifier a model wrote (report §4.1; the AutoIF recipe): ask a generator
for an instruction with an `evaluate()` function and test cases, keep the function only when it passes its
own tests in the sandbox, and turn each kept one into a query that `curation` verifies with that function.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from qwen25.data.generators import Generator
from qwen25.data.queries import Query
from qwen25.verify.model_written import VERIFICATION_FORMAT, parse_verification, vet_verification

_THEMES = ["the length of the response", "the words it must or must not use", "its format (lists, sections, "
           "JSON)", "the letters or punctuation it uses", "how it starts or ends", "its language or case"]


def autoif_queries(generator: Generator, n_prompts: int, k: int, seed: int = 0,
                   topics: Sequence[str] = _THEMES) -> tuple[list[Query], Counter]:
    """Ask for `n_prompts` x `k` model-written verifiers; return the kept ones as queries and a count of why
    the others were dropped ("unparsable", "failed its tests", "duplicate")."""
    rng = random.Random(f"{seed}:autoif")
    prompts = [[{"role": "user", "content": f"{VERIFICATION_FORMAT}\n\nMake the instruction about "
                                            f"{rng.choice(topics)}."}] for _ in range(n_prompts)]
    outcomes: Counter = Counter()
    queries: list[Query] = []
    seen: set[str] = set()
    for p, outputs in enumerate(generator(prompts, k, seed)):
        for j, text in enumerate(outputs):
            try:
                spec = parse_verification(text)
            except ValueError:
                outcomes["unparsable"] += 1
                continue
            if spec.instruction in seen:
                outcomes["duplicate"] += 1
                continue
            if not vet_verification(spec).passed:
                outcomes["failed its tests"] += 1
                continue
            seen.add(spec.instruction)
            outcomes["kept"] += 1
            queries.append(Query(f"autoif-{len(queries):06d}", "instructions_code",
                                 [{"role": "user", "content": spec.instruction}],
                                 {"kind": "model_written", "spec": spec.to_dict()},
                                 f"model-written verifier by {generator.name}, seed={seed}, prompt {p}, sample {j}"))
    return queries, outcomes
