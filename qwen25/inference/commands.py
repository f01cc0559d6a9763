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
from qwen25.inference.kernels import decision_table, measured_decisions
from qwen25.inference.sampling import SamplingParams
from qwen25.loading import load_model, resolve_model
from qwen25.tokenizer import load_tokenizer


def parse_ids(text: str) -> list[int] | None:
    """'9707 1879, 11' -> [9707, 1879, 11]; None when the text is not a list of ids."""
    parts = text.replace(",", " ").split()
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def generate_to(out: TextIO, model: str, prompt: str, tokenizer: str | None = None, chat: bool = False,
                print_ids: bool = False, dtype: str | None = None, **sampling) -> None:
    """Write the model's continuation of `prompt` to `out` as it is produced.

    model: a directory, a fetched model's name or a preset. tokenizer: a directory or 'qwen2.5' (default: the
    model directory's, if it has one). sampling: SamplingParams fields overriding the model's
    generation_config (None leaves a field as the config says)."""
    model_ref = resolve_model(model)
    lm = load_model(model_ref, dtype=dtype).eval()
    tok = None
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    elif (Path(model_ref) / "tokenizer.json").is_file():
        tok = load_tokenizer(model_ref)
    ids = None if chat else parse_ids(prompt)
    if ids is None:
        if tok is None:
            raise ValueError("a text prompt needs a tokenizer: the model directory has no tokenizer.json; pass "
                             "--tokenizer DIR (or 'qwen2.5'), or give token ids")
        if chat:
            ids, _ = tok.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            ids = tok.encode_ordinary(prompt)
    params = SamplingParams.from_generation_config(lm.generation_config, **sampling)
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
