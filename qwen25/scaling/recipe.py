"""Scaling-sweep recipes: the data (as pretraining prepares it), the model shapes, and the grid of token budgets,
learning rates and batch sizes each shape is trained at; plus the held-out configurations `validate` trains.

The grid is every (model, tokens, batch, lr) of the recipe. A run is identified by a hash of the settings that
change its result (model shape, data, tokenizer, seed, schedule, optimizer, tokens, lr, batch) and of nothing
else: renaming a model, changing the micro-batch (exact gradient accumulation), the device or the number of
processes does not make a finished run count as new, and adding grid points runs only the new ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen25.model import ConfigError, ModelConfig, get_preset
from qwen25.pretraining import recipe as pretraining_recipe
from qwen25.pretraining.recipe import DataSection, TokenizerSection
from qwen25.training import recipe as recipe_io
from qwen25.training.recipe import RecipeError
from qwen25.training.trainer import TrainConfig


@dataclass
class ModelEntry:
    """One model shape: a preset with field overrides; its own grid lists replace the sweep's when given."""

    name: str = ""
    preset: str = "qwen25-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # sequences per optimizer step


@dataclass
class SweepSection:
    seq_len: int = 128
    schedule: str = "wsd"  # "wsd" or "cosine"
    warmup_fraction: float = 0.05  # of each run's steps
    decay_fraction: float = 0.2  # WSD: the share of steps spent decaying
    min_lr_ratio: float = 0.0  # the schedule ends at lr * min_lr_ratio
    tokens: list[int] = field(default_factory=lambda: [1_000_000])  # token budgets D
    lrs: list[float] = field(default_factory=lambda: [1e-3, 2e-3, 4e-3])
    batches: list[int] = field(default_factory=lambda: [8, 16, 32])
    curve_points: int = 4  # held-out evaluations per run besides the first (the last one is the final loss)


@dataclass
class HeldoutSection:
    """The held-out runs of `qwen25 scaling validate`: a dense shape larger than any in the sweep, trained on more
    tokens than any sweep run, at the predicted LR and batch and at `lr_factors` times that LR; and one MoE shape
    at its predicted LR and batch."""

    dense: ModelEntry | None = None  # its `tokens` holds one budget
    moe: ModelEntry | None = None
    lr_factors: list[float] = field(default_factory=lambda: [0.5, 2.0])


@dataclass
class ScalingRecipe(recipe_io.StageRecipe):
    name: str = "scaling"
    seed: int = 1234
    run_dir: str = ""  # default runs/<name>
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepSection = field(default_factory=SweepSection)
    models: list[ModelEntry] = field(default_factory=list)
    heldout: HeldoutSection = field(default_factory=HeldoutSection)
    source: str = "<defaults>"

    def validate(self) -> None:
        validate(self)

    def data_recipe(self) -> pretraining_recipe.Recipe:
        """The pretraining recipe whose corpus, tokenizer and shards this sweep trains on (prepared by the
        pretraining pipeline's own steps, in this sweep's directory)."""
        stage = pretraining_recipe.StageSection(seq_len=self.sweep.seq_len, batch=self.train.micro_batch)
        return pretraining_recipe.Recipe(name=self.name, seed=self.seed, run_dir=str(self.directory),
                                         tokenizer=self.tokenizer, data=self.data, train=self.train,
                                         stages=[stage], source=self.source)


@dataclass
class RunSpec:
    """One point of the grid."""

    model: ModelEntry
    tokens: int  # the budget D (the run trains ceil(D / (batch * seq_len)) whole steps)
    lr: float
    batch: int
    settings: dict  # everything that identifies the run (see the module docstring)

    @property
    def id(self) -> str:
        return run_id(self.settings)


def run_id(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def model_config(entry: ModelEntry, vocab_size: int, eot: int | None, seq_len: int, where: str = "model"
                 ) -> ModelConfig:
    """The entry's preset with its overrides, sized for the tokenizer and the sweep's sequence length, in fp32."""
    try:
        cfg, _ = get_preset(entry.preset)
    except KeyError as e:
        raise RecipeError(f"{where}.preset: {e.args[0]}") from None
    try:
        cfg = cfg.replace(**entry.overrides)
        return cfg.replace(vocab_size=vocab_size, bos_token_id=eot, eos_token_id=eot, dtype="float32",
                           max_position_embeddings=seq_len)
    except (TypeError, ValueError, ConfigError) as e:
        raise RecipeError(f"{where}.overrides: {e}") from None


def _identity(r: ScalingRecipe) -> dict:
    """The settings shared by every run of the recipe that change results (the data workers do not). A data
    field at its "off" value is left out, so that adding an optional stage to the data section does not
    rename every finished run (`pipeline`, empty: the raw corpus)."""
    data = dataclasses.asdict(r.data)
    data.pop("workers")
    if not data.get("pipeline"):
        data.pop("pipeline", None)
    t = r.train
    sweep = r.sweep
    return {"seed": r.seed, "data": data, "tokenizer": dataclasses.asdict(r.tokenizer),
            "seq_len": sweep.seq_len,
            "schedule": {"kind": sweep.schedule, "warmup_fraction": sweep.warmup_fraction,
                         "decay_fraction": sweep.decay_fraction, "min_lr_ratio": sweep.min_lr_ratio},
            "optimizer": {"dtype": t.dtype, "weight_decay": t.weight_decay, "betas": list(t.betas),
                          "grad_clip": t.grad_clip}}


def make_run(r: ScalingRecipe, entry: ModelEntry, tokens: int, lr: float, batch: int) -> RunSpec:
    settings = {**_identity(r), "model": {"preset": entry.preset, "overrides": entry.overrides},
                "tokens": int(tokens), "lr": float(lr), "batch": int(batch)}
    return RunSpec(entry, int(tokens), float(lr), int(batch), settings)


def grid(r: ScalingRecipe) -> list[RunSpec]:
    """Every run of the sweep, in recipe order (model, tokens, batch, lr), each once. Entries may repeat a shape
    under the same name with other grid lists (a finer grid at one budget, say)."""
    runs: dict[str, RunSpec] = {}
    for entry in r.models:
        for tokens in entry.tokens or r.sweep.tokens:
            for batch in entry.batches or r.sweep.batches:
                for lr in entry.lrs or r.sweep.lrs:
                    run = make_run(r, entry, tokens, lr, batch)
                    runs.setdefault(run.id, run)  # two entries of one shape may share grid points
    return list(runs.values())


def steps_of(tokens: int, batch: int, seq_len: int) -> int:
    return -(-tokens // (batch * seq_len))


def validate(r: ScalingRecipe) -> None:
    """Ranges and shapes, before any data is prepared or any run starts."""
    src = r.source

    def fail(where: str, why: str) -> None:
        raise RecipeError(f"{src}: {where} {why}")

    r.data_recipe().validate()  # name, tokenizer, data and train, with pretraining's own checks
    s = r.sweep
    if s.seq_len < 2:
        fail("sweep.seq_len", f"must be >= 2, got {s.seq_len}")
    if s.schedule not in ("wsd", "cosine"):
        fail("sweep.schedule", f"must be 'wsd' or 'cosine', got {s.schedule!r}")
    if not 0 <= s.warmup_fraction < 1:
        fail("sweep.warmup_fraction", f"must be in [0, 1), got {s.warmup_fraction}")
    if not 0 < s.decay_fraction <= 1:
        fail("sweep.decay_fraction", f"must be in (0, 1], got {s.decay_fraction}")
    if not 0 <= s.min_lr_ratio <= 1:
        fail("sweep.min_lr_ratio", f"must be in [0, 1], got {s.min_lr_ratio}")
    if s.curve_points < 1:
        fail("sweep.curve_points", f"must be >= 1, got {s.curve_points}")
    _check_lists(fail, "sweep", s.tokens, s.lrs, s.batches, s.seq_len, required=True)
    if not r.models:
        fail("models", "must list at least one model shape ([[models]] tables)")
    shapes: dict[str, str] = {}
    for i, entry in enumerate(r.models):
        where = f"models[{i}]"
        _check_entry(fail, src, where, entry, r)
        shape = json.dumps({"preset": entry.preset, "overrides": entry.overrides}, sort_keys=True)
        if shapes.setdefault(entry.name, shape) != shape:
            fail(f"{where}.name", f"{entry.name!r} names two different shapes")
    v = r.heldout
    for key, entry in (("dense", v.dense), ("moe", v.moe)):
        if entry is None:
            continue
        where = f"heldout.{key}"
        _check_entry(fail, src, where, entry, r)
        if len(entry.tokens) != 1:
            fail(f"{where}.tokens", f"must hold exactly one token budget, got {entry.tokens}")
        if entry.lrs or entry.batches:
            fail(where, "takes no lrs or batches: validate trains at the predicted LR and batch")
        moe = model_config(entry, r.tokenizer.vocab_size, None, s.seq_len, f"{src}: {where}").is_moe
        if moe != (key == "moe"):
            fail(where, f"must be a {'MoE' if key == 'moe' else 'dense'} shape (num_experts "
                        f"{'> 0' if key == 'moe' else '= 0'})")
    for factor in v.lr_factors:
        if not (factor > 0 and math.isfinite(factor)) or factor == 1:
            fail("heldout.lr_factors", f"must be positive numbers other than 1, got {v.lr_factors}")


def _check_entry(fail, src: str, where: str, entry: ModelEntry, r: ScalingRecipe) -> None:
    if not entry.name or "/" in entry.name:
        fail(f"{where}.name", f"must be a non-empty name without '/', got {entry.name!r}")
    model_config(entry, r.tokenizer.vocab_size, None, r.sweep.seq_len, f"{src}: {where}")
    _check_lists(fail, where, entry.tokens, entry.lrs, entry.batches, r.sweep.seq_len, required=False)


def _check_lists(fail, where: str, tokens: list[int], lrs: list[float], batches: list[int], seq_len: int,
                 required: bool) -> None:
    for key, values in (("tokens", tokens), ("lrs", lrs), ("batches", batches)):
        if required and not values:
            fail(f"{where}.{key}", "must not be empty")
        if len(set(values)) != len(values):
            fail(f"{where}.{key}", f"lists a value twice: {values}")
    for lr in lrs:
        if not (lr > 0 and math.isfinite(lr)):
            fail(f"{where}.lrs", f"must be positive numbers, got {lrs}")
    for batch in batches:
        if batch < 1:
            fail(f"{where}.batches", f"must be integers >= 1, got {batches}")
    for tokens_ in tokens:
        if tokens_ < seq_len:
            fail(f"{where}.tokens", f"must be at least one sequence (sweep.seq_len = {seq_len}), got {tokens}")


def load_scaling_recipe(path: str | Path, overrides: list[str] | None = None) -> ScalingRecipe:
    return recipe_io.load_recipe(path, ScalingRecipe, overrides)
