"""Offline RL with DPO (report §4.2): preference pairs from execution feedback and answer matching, the sigmoid
loss on log-probs summed over each completion, trained with the Online Merging Optimizer.

    qwen25 dpo run --recipe recipes/dpo-tiny.toml [--set ...] [--resume | --fresh]

The reference is the starting (SFT) model. Its log-probs are computed once before training and cached in the run
directory, keyed by the pair files, the reference weights and the settings that change them
(`reference = "cached"`), or computed alongside every step by a frozen copy (`reference = "live"`). Metrics are
TRL's: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected.

The recipe defaults are the release settings: beta 0.1, one epoch, OnDARE with reserve rate 0.01 and alpha 1e-7
(SPEC §6), learning rate 7e-7 (the report's). Online merging needs the base model the SFT model was trained
from (`optimizer.base`); the SFT model is the reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwen25.io import atomic_path
from qwen25.model import from_pretrained
from qwen25.posttraining.pairs import (
    Pair,
    PairBatch,
    PairData,
    PairSource,
    PairStats,
    collate_pairs,
    files_digest,
    load_pairs,
    pair_batches,
)
from qwen25.posttraining.sft import ModelSection
from qwen25.posttraining.stage import StageRecipe, per_unit_means, prepare_run_dir
from qwen25.tokenizer import load_tokenizer
from qwen25.training import recipe as recipe_io
from qwen25.training.distributed import DistInfo, all_reduce_sum, barrier, run_stage
from qwen25.training.losses import dpo_loss
from qwen25.training.online_merging import MODES, build_online_merging
from qwen25.training.recipe import RecipeError
from qwen25.training.startup import chat_generation_config, export_hf, load_for_training
from qwen25.training.trainer import LossOutput, Phase, TrainConfig, Trainer


@dataclass
class OptimizerSection:
    kind: str = "ondare"  # "ondare" | "onties" (online merging) | "adamw"
    reserve: float = 0.01  # p: share of each update (and of the task vector) kept
    alpha: float = 1e-7  # weight of the SFT task vector merged at every step
    rescale: bool = False  # restore the L1 norm after dropping (the reference code's option)
    base: str = ""  # HF directory of the pretrained model the SFT model came from (needed when alpha > 0)


@dataclass
class DPORecipe(StageRecipe):
    name: str = "dpo"
    lr: float = 7e-7
    min_lr: float = 7e-8
    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO: the probability that a label is flipped; 0 is plain DPO
    reference: str = "cached"  # "cached": reference log-probs computed once; "live": a frozen copy every step
    model: ModelSection = field(default_factory=ModelSection)  # the SFT model: the policy's start and the reference
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    data: PairData = field(default_factory=PairData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch=4, weight_decay=0.0, eval_every=50,
                                                                   checkpoint_every=200, betas=[0.9, 0.999]))

    def validate(self) -> None:
        self.check_common(self.train, self.model)
        self.data.check(self.source)

        def fail(where: str, why: str) -> None:
            raise RecipeError(f"{self.source}: {where} {why}")

        if not self.beta > 0:
            fail("beta", f"must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            fail("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        if self.reference not in ("cached", "live"):
            fail("reference", f"must be 'cached' or 'live', got {self.reference!r}")
        opt = self.optimizer
        if opt.kind not in MODES + ("adamw",):
            fail("optimizer.kind", f"must be one of {', '.join(MODES + ('adamw',))}, got {opt.kind!r}")
        if not 0 < opt.reserve <= 1:
            fail("optimizer.reserve", f"must be in (0, 1], got {opt.reserve}")
        if not 0 <= opt.alpha < 1:
            fail("optimizer.alpha", f"must be in [0, 1), got {opt.alpha}")
        if opt.kind != "adamw" and opt.alpha > 0 and not opt.base:
            fail("optimizer.base", "must name the pretrained model the SFT model was trained from (online merging "
                 "merges theta_SFT - theta_base); set optimizer.alpha = 0 to merge nothing")


def load_dpo_recipe(path: str | Path, overrides: list[str] | None = None) -> DPORecipe:
    return recipe_io.load_recipe(path, DPORecipe, overrides)


# log-probs and the loss --------------------------------------------------------------------------------------


def sequence_logps(model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs summed over each row's completion tokens [2P] (fp32), and the MoE aux loss term (or None)."""
    device = next(model.parameters()).device
    out = model(batch.input_ids.to(device), labels=batch.labels.to(device), return_logprobs=True)
    extra = out.router.weighted_aux_loss if out.router is not None else None
    return out.logprobs.sum(-1), extra


def count_pairs(batch: PairBatch) -> int:
    return batch.pairs


def make_dpo_loss(beta: float, label_smoothing: float, reference: torch.nn.Module | None = None):
    """loss_fn(model, batch) for the trainer: the DPO loss summed over pairs, with TRL's metrics as sums. The
    reference log-probs come from `batch.ref_logps` (cached) or from `reference` (live)."""

    def loss_fn(model: torch.nn.Module, batch: PairBatch) -> LossOutput:
        logps, extra = sequence_logps(model, batch)
        if batch.ref_logps is not None:
            ref = batch.ref_logps.to(logps.device)
        else:
            with torch.no_grad():
                ref, _ = sequence_logps(reference, batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta,
                                                          label_smoothing)
        n = batch.pairs
        logs = {"pairs": n, "rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
                "rewards/accuracies": (chosen_rewards > rejected_rewards).sum(),
                "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
                "logps/chosen": chosen.detach().sum(), "logps/rejected": rejected.detach().sum()}
        return LossOutput(loss * n, n, logs, extra)

    return loss_fn


def summarize_dpo_logs(logs: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
    return per_unit_means(logs, "pairs")


# cached reference log-probs ----------------------------------------------------------------------------------


def _weights_fingerprint(directory: str | Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in Path(directory).glob("*.safetensors"))


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: Sequence[Pair], micro_batch: int, pad_id: int, info: DistInfo,
                    autocast) -> torch.Tensor:
    """[N, 2] summed completion log-probs (chosen, rejected) of every pair under `model` (each process computes
    its share with its own full copy, then one all-reduce)."""
    out = torch.zeros(len(pairs), 2, dtype=torch.float64, device=info.device)
    was_training = model.training
    model.eval()
    mine = list(range(info.rank, len(pairs), info.world))
    for start in range(0, len(mine), micro_batch):
        idx = mine[start:start + micro_batch]
        with autocast():
            logps, _ = sequence_logps(model, collate_pairs(pairs, idx, pad_id))
        out[idx] = logps.view(2, -1).t().double()
    model.train(was_training)
    return all_reduce_sum(out, info).float().cpu()


def cached_reference_logps(path: Path, key: str, compute, info: DistInfo, log) -> dict[str, torch.Tensor]:
    """{"train": [N, 2], "heldout": [M, 2]} from `path` when its key matches, else `compute()` and save it."""
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key:
            log(f"dpo: reference log-probs from {path}")
            return saved["logps"]
    logps = compute()
    if info.main:
        with atomic_path(path) as tmp:
            torch.save({"key": key, "logps": logps}, tmp)
    barrier(info)
    return logps


def with_reference(table: torch.Tensor):
    """attach(batch) for PairSource: the batch's cached reference log-probs, chosen rows then rejected rows."""

    def attach(batch: PairBatch) -> PairBatch:
        rows = table[batch.index]
        batch.ref_logps = torch.cat([rows[:, 0], rows[:, 1]])
        return batch

    return attach


# the run -----------------------------------------------------------------------------------------------------


def run_dpo(recipe: DPORecipe, resume: bool = False, fresh: bool = False, log=print) -> Path | None:
    """Train one pass of the pair data (or `data.epochs`); returns the exported HF directory (rank 0)."""
    return run_stage(_run, recipe, resume, fresh, log)


def _autocast(train: TrainConfig, device: torch.device):
    """The trainer's autocast setting, for forwards outside the trainer (reference log-probs)."""
    dtype = train.autocast_dtype
    return (lambda: contextlib.nullcontext()) if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))


def _optimizer_factory(recipe: DPORecipe, reference_path: str, device: torch.device):
    opt = recipe.optimizer
    if opt.kind == "adamw":
        return None  # the trainer's AdamW

    def build(model: torch.nn.Module):
        base = reference = None
        if opt.alpha > 0:
            base = from_pretrained(opt.base, dtype=torch.float32, device=device).state_dict()
            reference = (from_pretrained(reference_path, dtype=torch.float32, device=device).state_dict()
                         if reference_path else None)
        return build_online_merging(model, recipe.lr, recipe.train.weight_decay, tuple(recipe.train.betas), opt.kind,
                                    opt.reserve, opt.alpha, opt.rescale, seed=recipe.seed, base=base,
                                    reference=reference)

    return build


def _run(recipe: DPORecipe, info: DistInfo, resume: bool, fresh: bool, log) -> Path | None:
    out = recipe.directory
    prepare_run_dir(out, resume, fresh, info.main, ("hf",))
    if recipe.optimizer.kind != "adamw" and recipe.optimizer.alpha > 0 and not recipe.model.path:
        raise ValueError(f"{recipe.source}: online merging needs model.path (the SFT model whose task vector it "
                         "merges); a preset has none")
    tok = load_tokenizer(recipe.model.tokenizer or recipe.model.path or "qwen2.5")
    stats, held_stats = PairStats(), PairStats()
    train = load_pairs(recipe.data.train, tok, recipe.data.max_len, stats)
    heldout = load_pairs(recipe.data.heldout, tok, recipe.data.max_len, held_stats) if recipe.data.heldout else []
    log(f"dpo data: {stats.summary()}" + (f"; held out: {held_stats.summary()}" if heldout else ""))
    model = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed)
    autocast = _autocast(recipe.train, info.device)
    reference = None
    tables: dict[str, torch.Tensor] = {}
    if recipe.reference == "live":
        reference = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed).eval()
        reference.requires_grad_(False)
    else:
        key = hashlib.sha256(json.dumps({
            "pairs": files_digest(recipe.data.train + recipe.data.heldout), "max_len": recipe.data.max_len,
            "reference": recipe.model.path and _weights_fingerprint(recipe.model.path), "preset": recipe.model.preset,
            "seed": recipe.seed, "dtype": recipe.train.dtype, "micro_batch": recipe.train.micro_batch,
        }).encode()).hexdigest()
        tables = cached_reference_logps(
            out / "reference_logps.pt", key,
            lambda: {"train": reference_logps(model, train, recipe.train.micro_batch, tok.pad_id, info, autocast),
                     "heldout": reference_logps(model, heldout, recipe.train.micro_batch, tok.pad_id, info, autocast)},
            info, log)
    source = PairSource(train, recipe.data.pairs_per_step, recipe.data.epochs, recipe.seed, tok.pad_id, info,
                        recipe.train.micro_batch, attach=with_reference(tables["train"]) if tables else None)
    loss_fn = make_dpo_loss(recipe.beta, recipe.label_smoothing, reference)
    trainer = Trainer(model, recipe.train, info, out, loss_fn, count_pairs, lr=recipe.lr, log=log,
                      optimizer=_optimizer_factory(recipe, recipe.model.path, info.device),
                      summarize_logs=summarize_dpo_logs)
    trainer.resume() if resume else trainer.start_fresh()
    held = pair_batches(heldout, recipe.train.micro_batch, tok.pad_id, info)
    if tables:
        held = [with_reference(tables["heldout"])(b) for b in held]
    evaluate = (lambda: {f"eval_{k}": v for k, v in trainer.evaluate(held).items() if k not in ("pairs", "units")}
                ) if held else None
    phase = Phase("dpo", source.total_steps, recipe.build_schedule(source.total_steps), source,
                  info={"optimizer": recipe.optimizer.kind})
    trainer.fit(0, phase, evaluate=evaluate, checkpoint_extra=lambda: {"recipe": recipe_io.to_dict(recipe)})
    final = export_hf(trainer.model, trainer.inner.config, tok, out / "hf", info, chat_generation_config(tok))
    if info.main:
        log(f"dpo: {trainer.state['step']} steps ({recipe.optimizer.kind}); model exported to {final}")
    return final
