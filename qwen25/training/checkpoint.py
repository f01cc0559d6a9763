"""Training checkpoints: model and optimizer through torch.distributed.checkpoint (DCP), the trainer's own state
(step, phase, data position, RNG states) in one small file, and a manifest with a checksum per file.

Why DCP rather than gathering to rank 0: every rank writes its own shard in parallel and DCP reshards on
load, so a checkpoint saved by N processes (FSDP2, DDP or none) loads into M processes, and no rank ever
has to hold the full optimizer state.

Integrity: a checkpoint is written into `step-N.tmp`; the manifest (size and sha256 of every file) is written
last, then the directory is renamed to `step-N`. On resume the manifest is checked; a damaged or partial
checkpoint is reported in one line and the newest intact one is used. Old checkpoints are pruned by renaming
them to `step-N.deleting` before removal, so a kill during pruning never leaves a half-deleted checkpoint
that looks complete; leftovers of interrupted saves and prunes are removed at the next save or resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from qwen25.io import atomic_path, atomic_write_text
from qwen25.training.distributed import DistInfo, all_reduce_sum, barrier

TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{8})$")
_LEFTOVER = re.compile(r"^step-\d{8}\.(tmp|deleting)$")
# DCP warns on every single-process save/load; one process is a supported, intended case here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class CheckpointDamaged(ValueError):
    """A checkpoint whose files do not match its manifest (or that has none); the message says what is wrong."""


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, oldest first (interrupted saves and prunes are never listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name) and p.is_dir())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(directory)}
    atomic_write_text(directory / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")


def verify_checkpoint(directory: Path) -> None:
    """Raise CheckpointDamaged unless every file the manifest lists is present with its size and checksum."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise CheckpointDamaged(f"{directory}: no {MANIFEST} (an interrupted or partial save)")
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointDamaged(f"{manifest}: unreadable manifest ({e})") from None
    for name, meta in listed.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointDamaged(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != meta["bytes"]:
            raise CheckpointDamaged(f"{path}: {path.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)")
        if _sha256(path) != meta["sha256"]:
            raise CheckpointDamaged(f"{path}: checksum does not match the manifest (the file is corrupt)")
    if TRAINER_STATE not in listed:
        raise CheckpointDamaged(f"{directory}: the manifest does not list {TRAINER_STATE}")


def clean_leftovers(directory: Path) -> list[Path]:
    """Remove what interrupted saves (`.tmp`) and prunes (`.deleting`) left behind; returns what was removed."""
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if _LEFTOVER.match(p.name)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _remove(checkpoint: Path) -> None:
    """Rename, then delete: a kill part-way leaves a `.deleting` directory, never a damaged `step-N`."""
    doomed = checkpoint.with_name(checkpoint.name + ".deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    checkpoint.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def latest_intact_checkpoint(directory: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`; damaged newer ones are reported through `log`.

    None when the directory holds no checkpoint; an error when it holds some and none is intact. Under torchrun
    rank 0 decides and every rank gets its answer."""
    decision: list = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        clean_leftovers(directory)
        found = checkpoints(directory)
        problems = []
        for path in reversed(found):
            try:
                verify_checkpoint(path)
            except CheckpointDamaged as e:
                problems.append(str(e))
                continue
            decision[0] = str(path)
            break
        for problem in problems:
            if log:
                log(f"warning: skipping damaged checkpoint: {problem}")
        if found and decision[0] is None:
            decision[0] = "error: " + "; ".join(problems)
    if dist.is_initialized():
        dist.broadcast_object_list(decision, src=0)
    if decision[0] is None:
        return None
    if decision[0].startswith("error: "):
        raise CheckpointDamaged(f"{directory}: no intact checkpoint to resume from ({decision[0][7:]})")
    return Path(decision[0])


def _params_finite(model: torch.nn.Module, info: DistInfo) -> bool:
    bad = torch.zeros((), dtype=torch.float64, device=info.device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        bad += (~torch.isfinite(local.detach())).any().double()
    return float(all_reduce_sum(bad, info)) == 0


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int, info: DistInfo,
                    log: Callable[[str], None] | None = None) -> Path:
    """Write `step-N` atomically (see the module docstring); keep the newest `keep_last` (>= 1)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if not _params_finite(model, info):
        raise ValueError(f"step {step}: the model has non-finite weights; refusing to write a checkpoint of them")
    final = directory / f"step-{step:08d}"
    tmp = directory / f"step-{step:08d}.tmp"
    try:
        if info.main:
            clean_leftovers(directory)
            tmp.mkdir(parents=True)
        barrier(info)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        barrier(info)
        if info.main:
            with atomic_path(tmp / TRAINER_STATE) as t:
                torch.save({**trainer_state, "rng": rng_state(), "world": info.world}, t)
            write_manifest(tmp)
            if final.exists():  # the same step saved again (a resumed run): the old copy goes first
                _remove(final)
            tmp.rename(final)
            for old in checkpoints(directory)[:-keep_last]:
                _remove(old)
    except OSError as e:
        if info.main:
            shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"disk full while writing checkpoint {tmp}; the earlier checkpoints in {directory} "
                          "are intact") from None
        raise
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
