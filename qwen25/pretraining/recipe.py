"""Pretraining recipes: small dataclasses loaded from TOML, with `--set section.key=value` overrides.

An unknown or mistyped key is an error naming the key and the file, raised before anything runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


class RecipeError(ValueError):
    pass


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
class TrainSection:
    micro_batch: int = 16  # rows per forward pass on each process
    dtype: str = "bfloat16"  # autocast dtype; "float32" trains without autocast
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200
    keep_last: int = 2
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "fsdp"  # used when launched with torchrun: "fsdp", "ddp" or "none"
    device: str = "auto"
    max_steps: int = 0  # stop after this many steps in total (0: run every stage to its budget)


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
class Recipe:
    name: str = "run"
    seed: int = 1234
    run_dir: str = ""  # default runs/<name>
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: list[StageSection] = field(default_factory=lambda: [StageSection()])
    source: str = "<defaults>"

    @property
    def directory(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


_SECTIONS = {"model": ModelSection, "tokenizer": TokenizerSection, "data": DataSection, "train": TrainSection}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecipeError(f"{where} must be {hint.__name__}, got {value!r}")
        return value
    if origin in (list, dict) and not isinstance(value, origin):
        raise RecipeError(f"{where} must be a {origin.__name__}, got {value!r}")
    return value


def _fill(cls: type, raw: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in names or key == "source":
            raise RecipeError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names - {'source'}))})")
        values[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**values)


def recipe_from_dict(raw: dict, source: str = "<dict>") -> Recipe:
    raw = dict(raw)
    kwargs: dict[str, Any] = {"source": source}
    for key in list(raw):
        if key in _SECTIONS:
            if not isinstance(raw[key], dict):
                raise RecipeError(f"{source}: [{key}] must be a table")
            kwargs[key] = _fill(_SECTIONS[key], raw.pop(key), f"{source}: {key}")
        elif key == "stages":
            stages = raw.pop(key)
            if not isinstance(stages, list) or not stages:
                raise RecipeError(f"{source}: 'stages' must be a non-empty array of tables ([[stages]])")
            kwargs["stages"] = [_fill(StageSection, s, f"{source}: stages[{i}]") for i, s in enumerate(stages)]
    top = _fill(Recipe, raw, source)
    recipe = dataclasses.replace(top, **kwargs)
    validate(recipe)
    return recipe


def validate(r: Recipe) -> None:
    src = r.source
    if r.train.parallel not in ("fsdp", "ddp", "none"):
        raise RecipeError(f"{src}: train.parallel must be 'fsdp', 'ddp' or 'none', got {r.train.parallel!r}")
    if r.train.dtype not in ("bfloat16", "float32", "float16"):
        raise RecipeError(f"{src}: train.dtype must be bfloat16, float16 or float32, got {r.train.dtype!r}")
    for i, s in enumerate(r.stages):
        if s.batch % r.train.micro_batch and r.train.micro_batch < s.batch:
            raise RecipeError(f"{src}: stages[{i}].batch ({s.batch}) must be a multiple of train.micro_batch "
                              f"({r.train.micro_batch})")
        if not 0 < s.long_fraction <= 1:
            raise RecipeError(f"{src}: stages[{i}].long_fraction must be in (0, 1], got {s.long_fraction}")
        if s.schedule not in ("cosine", "wsd", "constant"):
            raise RecipeError(f"{src}: stages[{i}].schedule must be cosine, wsd or constant, got {s.schedule!r}")
        if s.seq_len < 2 or s.tokens <= 0 or s.lr <= 0:
            raise RecipeError(f"{src}: stages[{i}] needs seq_len >= 2, tokens > 0 and lr > 0")
    if abs(sum(r.data.mixture.values())) <= 0:
        raise RecipeError(f"{src}: data.mixture must give some domain a positive weight")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like section.key=value")
    path, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string
    return path.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = raw
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(f"override {text!r}: no element {key} in '{'.'.join(keys[:i])}'")
                node = node[int(key)]
            else:
                node = node.setdefault(key, {})
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    return recipe_from_dict(apply_overrides(raw, overrides or []), source=str(path))
