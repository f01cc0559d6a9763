"""A small prepared run directory (corpus, 512-token tokenizer, shards) that pretraining tests copy, and a
recipe for a model small enough to take a step in well under a second."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SMALL_DATA = "{code=150000, en=150000, zh=150000, math=60000}"


TRAIN = dict(micro_batch=4, dtype="float32", eval_every=5, eval_batches=2, checkpoint_every=5, keep_last=3)


def recipe_text(name: str, run_dir: Path, **train) -> str:
    values = {**TRAIN, **train}
    train_lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in values.items())
    return f"""
name = "{name}"
seed = 7
run_dir = "{run_dir}"

[model]
preset = "qwen25-tiny"
overrides = {{ vocab_size = 512, hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2 }}

[tokenizer]
vocab_size = 512
train_bytes = 300000

[data]
bytes_per_domain = {SMALL_DATA}
heldout_per_mille = 100
workers = 1

[train]
{train_lines}

[[stages]]
name = "short"
seq_len = 64
batch = 8
tokens = 4096
rope_theta = 10000.0
lr = 3e-3
warmup_steps = 2

[[stages]]
name = "long"
seq_len = 128
batch = 4
tokens = 2560
rope_theta = 1000000.0
lr = 1e-3
warmup_steps = 1
long_fraction = 0.5
"""


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen25.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def seed_run_dir(prepared: Path, target: Path) -> None:
    """Copy the prepared data and tokenizer so the pipeline reuses them instead of rebuilding."""
    target.mkdir(parents=True, exist_ok=True)
    for part in ("data", "tokenizer"):
        shutil.copytree(prepared / part, target / part, dirs_exist_ok=True)
