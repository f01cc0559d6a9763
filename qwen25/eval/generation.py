"""The harness's generation interface, and its implementation on the inference engine.

Generative tasks call a `GenerateFn`: token-id prompts, a token budget, stop strings, temperature, seed and
the number of samples per prompt -> for each prompt its `n` completion texts, cut right before the first
stop string (lm-eval's `generate_until` contract). `engine_generate_fn` submits every prompt to one
`Engine` (continuous batching; a prompt's `n` samples share one prefill, sample i seeded seed + i) and steps
it until all are done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams

GenerateFn = Callable[..., list[list[str]]]  # (prompts, max_new_tokens, stop_strings, temperature=0.0, seed=None, n=1)


def engine_generate_fn(engine: Engine, stop_ids: Sequence[int],
                       log: Callable[[str], None] | None = None) -> GenerateFn:
    """A GenerateFn on `engine` (greedy at temperature 0, else sampling), logging finished prompts."""

    def generate(prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 temperature: float = 0.0, seed: int | None = None, n: int = 1) -> list[list[str]]:
        params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                temperature=temperature if temperature > 0 else 1.0, stop_token_ids=list(stop_ids),
                                stop=list(stop_strings), seed=seed, n=n)
        ids = [engine.submit(list(p), params) for p in prompts]
        texts: dict[str, list[str | None]] = {r: [None] * n for r in ids}
        finished = 0
        while engine.has_work:
            for delta in engine.step():
                if delta.finish_reason and delta.request_id in texts:
                    texts[delta.request_id][delta.index] = delta.completion.text
                    if all(t is not None for t in texts[delta.request_id]):
                        finished += 1
                        if log and (finished % 16 == 0 or finished == len(ids)):
                            log(f"generated {finished}/{len(ids)}")
        return [[t or "" for t in texts[r]] for r in ids]

    return generate
