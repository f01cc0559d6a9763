"""Run the passkey and RULER-style tasks through a model and report accuracy by length (and by depth).

Generation is greedy through the inference engine, one prompt at a time, with the prompt optionally prefilled
in chunks; whatever long-context setup `configure` chose (YaRN, dual chunk, sparse) applies unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from qwen25.inference.engine import Engine
from qwen25.inference.sampling import SamplingParams
from qwen25.longctx.tasks import Tokenizer, make_sample, score


def greedy(model: torch.nn.Module, ids: Sequence[int], max_new_tokens: int, prefill_chunk: int | None = None,
           stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy continuation of one prompt (a stop id, when produced, ends it and is included), through the
    inference engine: the prompt prefilled `prefill_chunk` tokens per forward (None: at once)."""
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=list(stop_ids))
    return Engine(model, max_batch=1, prefill_chunk=prefill_chunk).generate([ids], params)[0].completions[0].token_ids


@dataclass(frozen=True)
class Result:
    task: str
    length: int  # requested prompt length
    tokens: int  # actual prompt length
    depth: float
    score: float  # 0..1


def evaluate(model: torch.nn.Module, tokenizer: Tokenizer, tasks: Sequence[str], lengths: Sequence[int],
             depths: Sequence[float], samples: int, prefill_chunk: int | None = None, seed: int = 0,
             stop_ids: Sequence[int] = (), log: Callable[[str], None] | None = None) -> list[Result]:
    """`samples` prompts per (task, length, depth), scored by string match."""
    results = []
    for task in tasks:
        for length in lengths:
            for depth in depths:
                for i in range(samples):
                    sample = make_sample(task, tokenizer, length, depth, seed * 100_003 + i)
                    ids = tokenizer.encode(sample.prompt)
                    output = tokenizer.decode(greedy(model, ids, sample.max_new_tokens, prefill_chunk, stop_ids))
                    results.append(Result(task, length, len(ids), depth, score(sample, output)))
                    if log:
                        log(f"{task} length {length} ({len(ids)} tokens) depth {depth:g}: "
                            f"{results[-1].score:.2f} {output.strip()[:60]!r}")
    return results


def accuracy_table(results: Sequence[Result], rows: str = "task") -> str:
    """Markdown table of mean accuracy (%) with one column per length; rows by task or by depth."""
    lengths = sorted({r.length for r in results})
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        cells[(getattr(r, rows), r.length)].append(r.score)
    keys = list(dict.fromkeys(getattr(r, rows) for r in results))
    lines = [f"| {rows} | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for key in keys:
        values = [cells.get((key, n)) for n in lengths]
        lines.append(f"| {key:g} | " if isinstance(key, float) else f"| {key} | ")
        lines[-1] += " | ".join(f"{100 * sum(v) / len(v):.1f}" if v else "-" for v in values) + " |"
    return "\n".join(lines)
