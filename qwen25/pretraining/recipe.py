"""Pretraining recipes: small dataclasses loaded from TOML (`qwen25.training.recipe`), with `--set
section.key=value` overrides.

An unknown or mistyped key, or a value out of range, is an error naming the key and the file, raised before
anything runs (no corpus, tokenizer or shards are prepared for a recipe that cannot train).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qwen25.training import recipe as recipe_io
from qwen25.training.recipe import RecipeError
from qwen25.training.trainer import TrainConfig

TrainSection = TrainConfig  # the [train] table is the trainer's own


@dataclass
class ModelSection:
    preset: str = "qwen25-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # any ModelConfig field, e.g. hidden_size


@dataclass
class TokenizerSection:
    path: str = ""  # an existing tokenizer ('qwen2.5' or a directory); empty: train one on the corpus
    vocab_size: int = 8192
    train_bytes: int = 6_000_000


@dataclass
class DataSection:
    corpus_dir: str = ""  # your own train.jsonl + heldout.jsonl ({"text", "domain"} per line); empty: build one
    bytes_per_domain: dict[str, int] = field(default_factory=lambda: {"code": 4_000_000, "en": 4_000_000,
                                                                       "zh": 4_000_000, "math": 1_500_000})
    heldout_per_mille: int = 20
    mixture: dict[str, float] = field(default_factory=lambda: {"code": 0.3, "en": 0.3, "zh": 0.3, "math": 0.1})
    workers: int = 2
    document_masking: bool = False


@dataclass
class StageSection:
    name: str = "stage"
    seq_len: int = 256
    batch: int = 32  # sequences per optimizer step, over all processes
    tokens: int = 1_000_000  # the stage's token budget (rounded up to whole steps)
    rope_theta: float = 10_000.0
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    long_fraction: float = 1.0  # share of rows at seq_len; the rest are cut into shorter segments

    @property
    def steps(self) -> int:
        return -(-self.tokens // (self.batch * self.seq_len))


@dataclass
class Recipe(recipe_io.StageRecipe):
    name: str = "run"
    seed: int = 1234
    run_dir: str = ""  # default runs/<name>
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageSection] = field(default_factory=lambda: [StageSection()])
    source: str = "<defaults>"

    def validate(self) -> None:
        validate(self)


def validate(r: Recipe) -> None:
    """Ranges, not only types: everything a run would trip over later (or silently train wrong on)."""
    src = r.source

    def fail(where: str, why: str) -> None:
        raise RecipeError(f"{src}: {where} {why}")

    try:
        r.train.validate("train")
    except ValueError as e:
        raise RecipeError(f"{src}: {e}") from None
    if not r.name or "/" in r.name:
        fail("name", f"must be a non-empty name without '/', got {r.name!r}")
    if r.tokenizer.vocab_size < 256 + 22 + 1:
        fail("tokenizer.vocab_size", f"must be > 278 (256 bytes + 22 control tokens), got {r.tokenizer.vocab_size}")
    if r.tokenizer.train_bytes < 1:
        fail("tokenizer.train_bytes", f"must be >= 1, got {r.tokenizer.train_bytes}")
    for domain, size in r.data.bytes_per_domain.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            fail(f"data.bytes_per_domain.{domain}", f"must be an integer >= 0, got {size!r}")
    if not 0 <= r.data.heldout_per_mille < 1000:
        fail("data.heldout_per_mille", f"must be in [0, 1000), got {r.data.heldout_per_mille}")
    if r.data.workers < 1:
        fail("data.workers", f"must be >= 1, got {r.data.workers}")
    for domain, weight in r.data.mixture.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            fail(f"data.mixture.{domain}", f"must be a number >= 0, got {weight!r}")
    if not sum(r.data.mixture.values()) > 0:
        fail("data.mixture", "must give some domain a positive weight")
    micro = r.train.micro_batch
    for i, s in enumerate(r.stages):
        where = f"stages[{i}]"
        if s.seq_len < 2:
            fail(f"{where}.seq_len", f"must be >= 2, got {s.seq_len}")
        if s.batch < 1:
            fail(f"{where}.batch", f"must be >= 1, got {s.batch}")
        if s.batch % micro and micro < s.batch:
            fail(f"{where}.batch", f"({s.batch}) must be a multiple of train.micro_batch ({micro})")
        if s.tokens <= 0:
            fail(f"{where}.tokens", f"must be > 0, got {s.tokens}")
        if not (s.lr > 0 and math.isfinite(s.lr)):
            fail(f"{where}.lr", f"must be > 0, got {s.lr}")
        if not s.rope_theta > 0:
            fail(f"{where}.rope_theta", f"must be > 0, got {s.rope_theta}")
        if s.warmup_steps < 0:
            fail(f"{where}.warmup_steps", f"must be >= 0, got {s.warmup_steps}")
        if not 0 <= s.min_lr_ratio <= 1:
            fail(f"{where}.min_lr_ratio", f"must be in [0, 1], got {s.min_lr_ratio}")
        if not 0 < s.decay_fraction <= 1:
            fail(f"{where}.decay_fraction", f"must be in (0, 1], got {s.decay_fraction}")
        if not 0 < s.long_fraction <= 1:
            fail(f"{where}.long_fraction", f"must be in (0, 1], got {s.long_fraction}")
        if s.schedule not in ("cosine", "wsd", "constant"):
            fail(f"{where}.schedule", f"must be cosine, wsd or constant, got {s.schedule!r}")


def check_world(r: Recipe, world: int) -> None:
    """Every stage's batch splits into `world` processes x micro_batch rows (checked once the world is known)."""
    for i, s in enumerate(r.stages):
        per_rank = s.batch // world if s.batch % world == 0 else 0
        if not per_rank or per_rank % min(r.train.micro_batch, per_rank):
            raise RecipeError(f"{r.source}: stages[{i}].batch {s.batch} does not split into {world} processes x "
                              f"train.micro_batch {r.train.micro_batch}")


def recipe_from_dict(raw: dict, source: str = "<dict>") -> Recipe:
    recipe = recipe_io.fill(Recipe, raw, source)
    if not recipe.stages:
        raise RecipeError(f"{source}: 'stages' must be a non-empty array of tables ([[stages]])")
    recipe = replace(recipe, source=source)
    validate(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = recipe_io.apply_overrides(recipe_io.read_toml(path), overrides or [])
    return recipe_from_dict(raw, source=str(path))


