"""What the inference verbs of the command line do.

`qwen25 generate`: load a model by name, read the prompt as token ids or text (optionally as a chat turn),
and stream the continuation (text through the engine's incremental detokenizer, or ids).
`qwen25 kernels`: show (or measure again) the decode kernels chosen for a model on this machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from qwen25.inference.engine import Engine
from qwen25.inference.kernels import decision_table, measured_decisions, quantized_decisions, quantized_table
from qwen25.inference.sampling import SamplingParams
from qwen25.loading import load_model, resolve_model
from qwen25.tokenizer import load_tokenizer


def parse_ids(text: str, flag: str = "--prompt-ids") -> list[int]:
    """'9707 1879, 11' -> [9707, 1879, 11]; anything else is an error naming `flag`."""
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"{flag}: expected token ids separated by spaces or commas (e.g. '9707 1879 11'), "
                         f"got {text[:40]!r}")
    return [int(p) for p in parts]


def fit_to_positions(n_prompt: int, max_new_tokens: int, max_positions: int, warn: TextIO = sys.stderr) -> int:
    """The number of new tokens that fits the model's positions: a prompt that fills them is refused; a
    request that would run past them is clamped, saying so."""
    if n_prompt >= max_positions:
        raise ValueError(f"the prompt has {n_prompt} tokens; the model has {max_positions} positions "
                         f"(max_position_embeddings), leaving no room to generate")
    if n_prompt + max_new_tokens > max_positions:
        fitted = max_positions - n_prompt
        print(f"note: --max-new-tokens {max_new_tokens} clamped to {fitted}: prompt ({n_prompt}) + new tokens "
              f"must fit the model's {max_positions} positions", file=warn)
        return fitted
    return max_new_tokens


def generate_to(out: TextIO, model: str, prompt: str | None = None, prompt_ids: str | list[int] | None = None,
                tokenizer: str | None = None, chat: bool = False, print_ids: bool = False, dtype: str | None = None,
                **sampling) -> None:
    """Write the model's continuation to `out` as it is produced.

    Exactly one of `prompt` (text: needs a tokenizer) and `prompt_ids` (token ids, or a string of them) is
    given: the two are never guessed from each other. model: a directory, a fetched model's name or a preset.
    tokenizer: a directory or 'qwen2.5' (default: the model directory's, if it has one). sampling:
    SamplingParams fields overriding the model's generation_config (None leaves a field as the config says)."""
    if (prompt is None) == (prompt_ids is None):
        raise ValueError("give exactly one of --prompt TEXT and --prompt-ids IDS")
    if chat and prompt is None:
        raise ValueError("--chat wraps a text prompt: use --prompt TEXT, not --prompt-ids")
    ids = parse_ids(prompt_ids) if isinstance(prompt_ids, str) else (list(prompt_ids) if prompt_ids else None)
    model_ref = resolve_model(model)
    lm = load_model(model_ref, dtype=dtype).eval()
    tok = None
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    elif (Path(model_ref) / "tokenizer.json").is_file():
        tok = load_tokenizer(model_ref)
    if ids is None:
        if tok is None:
            raise ValueError("a text prompt needs a tokenizer: the model directory has no tokenizer.json; pass "
                             "--tokenizer DIR (or 'qwen2.5'), or give token ids with --prompt-ids")
        if chat:
            ids, _ = tok.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            ids = tok.encode_ordinary(prompt)
    params = SamplingParams.from_generation_config(lm.generation_config, **sampling)
    params.max_new_tokens = fit_to_positions(len(ids), params.max_new_tokens, lm.config.max_position_embeddings)
    as_text = tok is not None and not print_ids
    for delta in Engine(lm, tok if as_text else None, max_batch=1).stream(ids, params):
        out.write(delta.text if as_text else "".join(f"{t} " for t in delta.token_ids))
        out.flush()
    out.write("\n")


def generate_command(**kwargs) -> None:
    """`qwen25 generate`: `generate_to` on standard output."""
    generate_to(sys.stdout, **kwargs)


def kernels_command(model: str, dtype: str | None = None, remeasure: bool = False) -> None:
    """`qwen25 kernels`: the decode kernel choice for this model's shapes on this machine, measured now when
    `remeasure` or when the cache lacks it (run it on a quiet machine: the choice is cached)."""
    lm = load_model(resolve_model(model), dtype=dtype).eval()
    print(decision_table(measured_decisions(lm, remeasure=remeasure)))
    quantized = quantized_table(quantized_decisions(lm, remeasure=remeasure))
    if quantized:
        print(quantized)
