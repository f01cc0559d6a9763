"""Training checkpoints: model and optimizer through torch.distributed.checkpoint (DCP), plus the trainer's
own state (step, stage, loader position, RNG states) in one small file.

Why DCP rather than gathering to rank 0: every rank writes its own shard in parallel and DCP reshards on
load, so a checkpoint saved by N processes (FSDP2, DDP or none) loads into M processes, and no rank ever
has to hold the full optimizer state. Each checkpoint is written to `step-N.tmp` and renamed when complete;
only the last `keep_last` are kept.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from qwen25.io import atomic_path
from qwen25.training.distributed import DistInfo, barrier

TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^step-(\d{8})$")
# DCP warns on every single-process save/load; one process is a supported, intended case here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.tmp` directory is an interrupted write, never listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name) and (p / TRAINER_STATE).is_file())


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int, info: DistInfo) -> Path:
    final = directory / f"step-{step:08d}"
    tmp = directory / f"step-{step:08d}.tmp"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    barrier(info)
    if info.main:
        with atomic_path(tmp / TRAINER_STATE) as t:
            torch.save({**trainer_state, "rng": rng_state(), "world": info.world}, t)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimizer) in place, whatever world size saved them; return the trainer state."""
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
    optimizers = [] if optimizer is None else [optimizer]
    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optim": optim_sd} if optimizers else {"model": model_sd}  # DCP loads only these
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optim", {}),
                   options=StateDictOptions(strict=True))
    trainer_state = torch.load(path / TRAINER_STATE, weights_only=False)
    set_rng_state(trainer_state["rng"])
    return trainer_state
