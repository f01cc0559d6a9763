"""`qwen25 scaling sweep`: train every run of a scaling recipe's grid on the one trainer and append one record per
run to `<run_dir>/results.jsonl`.

Resumable and parallel without a coordinator: a run is identified by the hash of its settings
(`qwen25.scaling.recipe`); runs already in the results file are skipped; a process claims a run by creating
`locks/<id>` (exclusively), so several processes on one machine share a grid; `--shard i/n` gives array jobs on
several machines disjoint slices (by run id, so a slice does not change when the grid grows). Each record is
appended under a file lock by rewriting the file atomically (temp file + rename): a crash never leaves half a
line. A run killed mid-way starts again from its last checkpoint (`train.checkpoint_every`), or from the start.

Every run trains from the same initialisation seed on the same data order, and is scored on the same held-out
windows, so differences between runs are differences of settings, not of luck.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from qwen25.data.loader import Batch, PackedLoader
from qwen25.data.shards import ShardSet
from qwen25.model import build_model
from qwen25.model.moe import count_activated_parameters
from qwen25.model.qwen2 import count_parameters
from qwen25.pretraining.pipeline import prepare_corpus, prepare_shards, prepare_tokenizer
from qwen25.pretraining.trainer import RankSlices
from qwen25.scaling.recipe import RunSpec, ScalingRecipe, grid, model_config, steps_of
from qwen25.scaling.results import append_result, file_lock, finished_ids
from qwen25.training.distributed import DistInfo, init_distributed
from qwen25.training.losses import causal_lm_loss, count_target_tokens, summarize_moe_logs
from qwen25.training.metrics import flops_per_token
from qwen25.training.optim import Schedule
from qwen25.training.trainer import NonFiniteError, Phase, Trainer


# ---- claiming runs --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(locks: Path, run: str) -> bool:
    """Create `locks/<run>` exclusively. A lock left by a dead process on this machine is taken over; one from
    another machine is respected (delete `locks/` when no sweep is running to clear those)."""
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / run
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
            except (OSError, ValueError):
                return False  # being written by its owner right now
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def release(locks: Path, run: str) -> None:
    (locks / run).unlink(missing_ok=True)


def in_shard(run: str, shard: tuple[int, int]) -> bool:
    index, count = shard
    return int(run, 16) % count == index


# ---- data and one run -----------------------------------------------------------------------------------------


@dataclass
class SweepData:
    train: ShardSet
    heldout: list[Batch]  # the fixed held-out windows every run is scored on
    vocab_size: int
    eot: int


def prepare_data(recipe: ScalingRecipe, log: Callable[[str], None] = print) -> SweepData:
    """Corpus, tokenizer and shards, built once per sweep directory by the pretraining pipeline's own steps (a
    file lock keeps concurrent sweep processes from building them twice)."""
    data_recipe = recipe.data_recipe()
    with file_lock(recipe.directory / "data.lock"):
        corpus = prepare_corpus(data_recipe, log)
        tok = prepare_tokenizer(data_recipe, corpus, log)
        train_dir, heldout_dir = prepare_shards(data_recipe, corpus, tok, log)
    train = ShardSet.open(train_dir, tokenizer=tok)
    heldout = ShardSet.open(heldout_dir, tokenizer=tok)
    seq_len = recipe.sweep.seq_len
    mixture = {d: w for d, w in recipe.data.mixture.items() if d in heldout.domains and heldout.tokens(d) > seq_len}
    if not mixture:
        raise ValueError(f"{heldout_dir}: no domain has more than {seq_len} held-out tokens (raise "
                         "data.heldout_per_mille)")
    loader = PackedLoader(heldout, seq_len, recipe.train.micro_batch, mixture, seed=recipe.seed + 7)
    batches = [loader.next_batch() for _ in range(recipe.train.eval_batches)]
    return SweepData(train, batches, tok.vocab_size, tok.endoftext_id)


def micro_batch_for(batch: int, limit: int) -> int:
    """The largest divisor of `batch` that is <= `limit` (accumulation is exact, so any split gives the same run)."""
    return max(m for m in range(1, min(batch, limit) + 1) if batch % m == 0)


def describe_params(model: torch.nn.Module) -> dict:
    total, non_embedding = count_parameters(model)
    activated = count_activated_parameters(model)
    return {"params_total": total, "params_non_embedding": non_embedding, "params_activated": activated,
            "params_activated_non_embedding": activated - (total - non_embedding)}


def train_run(recipe: ScalingRecipe, spec: RunSpec, data: SweepData, info: DistInfo, directory: Path,
              log: Callable[[str], None] = print) -> dict:
    """Train one grid point and return its record (final held-out loss, curve, sizes, timing)."""
    sweep = recipe.sweep
    cfg = model_config(spec.model, data.vocab_size, data.eot, sweep.seq_len)
    steps = steps_of(spec.tokens, spec.batch, sweep.seq_len)
    micro = micro_batch_for(spec.batch, recipe.train.micro_batch)
    train_cfg = replace(recipe.train, micro_batch=micro, eval_every=max(1, steps // sweep.curve_points),
                        parallel="none")
    torch.manual_seed(recipe.seed)
    model = build_model(cfg, device=info.device, seed=recipe.seed)
    sizes = describe_params(model)
    trainer = Trainer(model, train_cfg, info, directory, causal_lm_loss, count_target_tokens, lr=spec.lr,
                      log=log, summarize_logs=summarize_moe_logs if cfg.is_moe else None)
    if trainer.resume() is None:
        trainer.start_fresh()
    loader = PackedLoader(data.train, sweep.seq_len, spec.batch, recipe.data.mixture, seed=recipe.seed)
    warmup = round(sweep.warmup_fraction * steps)
    schedule = Schedule(sweep.schedule, spec.lr, steps, warmup, sweep.min_lr_ratio, sweep.decay_fraction)
    phase = Phase("sweep", steps, schedule, RankSlices(loader, info, micro),
                  info={"lr_peak": spec.lr, "batch": spec.batch})
    error = None
    start = time.perf_counter()
    try:
        trainer.fit(0, phase, evaluate=lambda: {"eval_loss": trainer.evaluate(data.heldout)["loss"]})
    except NonFiniteError as e:
        error = str(e)
    seconds = time.perf_counter() - start
    metrics = trainer.metrics.read()
    curve = [[m["step"], m.get("tokens", 0), m["eval_loss"]] for m in metrics if "eval_loss" in m]
    trained = [m for m in metrics if "loss" in m and "eval_loss" not in m]
    final = curve[-1][2] if curve and error is None else None
    initial = curve[0][2] if curve else None
    diverged = final is None or not math.isfinite(final) or (initial is not None and final >= initial)
    return {"id": spec.id, "model": spec.model.name, "kind": "moe" if cfg.is_moe else "dense", **sizes,
            "tokens_target": spec.tokens, "tokens": steps * spec.batch * sweep.seq_len, "lr": spec.lr,
            "batch": spec.batch, "batch_tokens": spec.batch * sweep.seq_len, "seq_len": sweep.seq_len,
            "steps": steps, "initial_loss": initial, "final_loss": final if not diverged else None,
            "final_loss_raw": final, "train_loss": trained[-1]["loss"] if trained else None, "diverged": diverged,
            "error": error, "curve": curve, "flops_per_token": flops_per_token(cfg, sweep.seq_len),
            "seconds": round(seconds, 2), "tokens_per_s": round(steps * spec.batch * sweep.seq_len / seconds, 1),
            "device": str(info.device), "threads": torch.get_num_threads(), "settings": spec.settings,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run_specs(recipe: ScalingRecipe, specs: list[RunSpec], results: Path, log: Callable[[str], None] = print,
              data: SweepData | None = None) -> list[dict]:
    """Train the given runs that are not finished and not claimed by another process; returns the new records."""
    info = init_distributed(recipe.train.device)
    if info.world > 1:
        raise ValueError("a sweep runs one process per run: start several `qwen25 scaling sweep` processes (or "
                         "--shard i/n array jobs) instead of torchrun")
    locks = results.parent / "locks"
    done = finished_ids(results)
    todo = [s for s in specs if s.id not in done]
    log(f"{len(specs)} runs: {len(specs) - len(todo)} finished, {len(todo)} to train")
    if not todo:
        return []
    data = data or prepare_data(recipe, log)
    new = []
    for k, spec in enumerate(todo, 1):
        if spec.id in finished_ids(results) or not claim(locks, spec.id):
            log(f"[{k}/{len(todo)}] {spec.id} finished or claimed by another process: skipped")
            continue
        try:
            directory = results.parent / "runs" / spec.id
            label = (f"{spec.model.name} D={spec.tokens:,} lr={spec.lr:g} batch={spec.batch}")
            log(f"[{k}/{len(todo)}] {label}")
            record = train_run(recipe, spec, data, info, directory, log)
            append_result(results, record)
            new.append(record)
            shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # the record holds what the fit needs
            outcome = "diverged" if record["diverged"] else f"held-out loss {record['final_loss']:.4f}"
            log(f"[{k}/{len(todo)}] {label}: {outcome} ({record['seconds']:.0f} s, "
                f"{record['tokens_per_s']:,.0f} tokens/s)")
        finally:
            release(locks, spec.id)
    return new


def plan(recipe: ScalingRecipe, shard: tuple[int, int] = (0, 1)) -> list[RunSpec]:
    return [s for s in grid(recipe) if in_shard(s.id, shard)]


def describe_plan(recipe: ScalingRecipe, specs: list[RunSpec]) -> str:
    """One line per run (id, shape, budget, lr, batch, steps, finished or not) and the totals."""
    results = recipe.directory / "results.jsonl"
    done = finished_ids(results)
    seq_len = recipe.sweep.seq_len
    lines = [f"{'id':16}  {'model':12} {'N (non-emb)':>12} {'tokens':>11} {'lr':>9} {'batch':>5} {'steps':>6}  state"]
    sizes: dict[str, tuple[int, float]] = {}
    todo_tokens = todo_flops = 0.0
    for s in specs:
        if s.model.name not in sizes:
            cfg = model_config(s.model, recipe.tokenizer.vocab_size, None, seq_len)
            sizes[s.model.name] = (count_parameters(build_model(cfg, device="meta"))[1], flops_per_token(cfg, seq_len))
        n, fpt = sizes[s.model.name]
        steps = steps_of(s.tokens, s.batch, seq_len)
        finished = s.id in done
        if not finished:
            todo_tokens += steps * s.batch * seq_len
            todo_flops += steps * s.batch * seq_len * fpt
        lines.append(f"{s.id}  {s.model.name:12} {n:>12,} {s.tokens:>11,} {s.lr:>9.3g} {s.batch:>5} {steps:>6}  "
                     f"{'finished' if finished else 'to train'}")
    lines.append(f"{len(specs)} runs, {sum(s.id in done for s in specs)} finished; to train: {todo_tokens:,.0f} "
                 f"tokens, {todo_flops:.3g} training FLOPs")
    return "\n".join(lines)


def run_sweep(recipe: ScalingRecipe, shard: tuple[int, int] = (0, 1), dry_run: bool = False, threads: int = 0,
              log: Callable[[str], None] = print) -> list[dict]:
    """`qwen25 scaling sweep`: this shard's unfinished runs (or, with `dry_run`, the plan and its cost)."""
    if threads:
        torch.set_num_threads(threads)
    specs = plan(recipe, shard)
    if dry_run:
        log(describe_plan(recipe, specs))
        return []
    return run_specs(recipe, specs, recipe.directory / "results.jsonl", log)
