"""What the reward-model, DPO and GRPO stages share: the learning-rate fields of their recipes, the run directory's
fresh/resume rules, and per-step metric summaries (sums over micro-batches and processes turned into means)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen25.training.optim import Schedule
from qwen25.training.recipe import RecipeError
from qwen25.training.trainer import TrainConfig


@dataclass
class StageRecipe:
    """The top-level recipe fields every post-training stage has; a stage's recipe adds its own tables."""

    name: str = "stage"
    seed: int = 1234
    run_dir: str = ""  # default runs/<name>
    lr: float = 1e-6
    min_lr: float = 1e-7  # reached at the last step (cosine, wsd)
    schedule: str = "cosine"  # cosine, wsd or constant
    warmup_steps: int = 0
    source: str = "<defaults>"

    @property
    def directory(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def check_common(self, train: TrainConfig, model) -> None:
        def fail(why: str) -> None:
            raise RecipeError(f"{self.source}: {why}")

        try:
            train.validate("train")
        except ValueError as e:
            fail(str(e))
        if not (0 < self.lr and 0 <= self.min_lr <= self.lr):
            fail(f"lr/min_lr need 0 < lr and 0 <= min_lr <= lr, got lr {self.lr}, min_lr {self.min_lr}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            fail(f"schedule must be cosine, wsd or constant, got {self.schedule!r}")
        if self.warmup_steps < 0:
            fail(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if bool(model.path) == bool(model.preset):
            fail("model needs exactly one of 'path' (an HF directory) or 'preset'")

    def build_schedule(self, total_steps: int) -> Schedule:
        return Schedule(self.schedule, self.lr, total_steps, self.warmup_steps, self.min_lr / self.lr)


def prepare_run_dir(out: Path, resume: bool, fresh: bool, main: bool, outputs: tuple[str, ...]) -> None:
    """Create `out`; with `fresh` remove the previous run's `outputs`; refuse to mix a new run into old checkpoints."""
    if not main:
        return
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in ("checkpoints", "metrics.jsonl") + outputs:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out} already has checkpoints: pass --resume to continue that run, --fresh to start over, "
                         "or choose another name")


def per_unit_means(logs: dict[str, torch.Tensor], count_key: str) -> dict[str, float]:
    """Each summed scalar log divided by the summed `count_key` (pairs, sequences, tokens), and the count itself."""
    count = float(logs[count_key]) if count_key in logs else 0.0
    return {k: (float(v) / count if k != count_key and count else float(v))
            for k, v in logs.items() if v.numel() == 1}
