"""The data recipe (`recipes/data-*.toml`): heuristic thresholds, deduplication, model-based quality scoring,
the topic mixture and the executor, checked before anything runs (errors name the key and the file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from qwen25.data.pipeline.dedup import DedupConfig
from qwen25.data.pipeline.heuristics import HeuristicsConfig
from qwen25.data.pipeline.mixture import MixtureConfig
from qwen25.data.pipeline.quality import QualityConfig
from qwen25.training import recipe as recipe_io
from qwen25.training.recipe import RecipeError

EXECUTORS = ("local", "slurm", "ray")


@dataclass
class ExecutorConfig:
    kind: str = "local"  # local | slurm | ray
    tasks: int = 4  # input shards: every per-document stage runs this many tasks
    workers: int = 1  # local: tasks at once (1 runs them in this process); ray: tasks at once
    slurm: dict = field(default_factory=dict)  # more SlurmPipelineExecutor arguments: partition, time, ...
    ray: dict = field(default_factory=dict)  # more RayPipelineExecutor arguments: cpus_per_task, ...

    def check(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor.kind must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.tasks < 1 or self.workers < 1:
            raise ValueError(f"executor.tasks and executor.workers must be >= 1, got {self.tasks} and {self.workers}")
        if self.kind == "slurm" and not {"partition", "time"} <= set(self.slurm):
            raise ValueError("executor.slurm needs at least 'partition' and 'time' for a Slurm run")


@dataclass
class DataRecipe:
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    extra_inputs: list[str] = field(default_factory=list)  # more record files for the train split (e.g. synthetic)
    source: str = "<defaults>"

    def validate(self) -> None:
        try:
            for section in (self.heuristics, self.dedup, self.quality, self.mixture, self.executor):
                section.check()
        except ValueError as e:
            raise RecipeError(f"{self.source}: {e}") from None
        for key, path in [*(("extra_inputs", p) for p in self.extra_inputs), ("quality.labels", self.quality.labels)]:
            if path and not Path(path).is_file():
                raise RecipeError(f"{self.source}: {key}: {path} is not a file")

    def to_dict(self) -> dict:
        return recipe_io.to_dict(self)


def load_data_recipe(path: str | Path, overrides: list[str] | None = None) -> DataRecipe:
    return recipe_io.load_recipe(path, DataRecipe, overrides)


def data_recipe_from_dict(raw: dict, source: str = "<dict>") -> DataRecipe:
    recipe = replace(recipe_io.fill(DataRecipe, raw, source), source=source)
    recipe.validate()
    return recipe
