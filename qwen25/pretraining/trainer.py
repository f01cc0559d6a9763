"""Pretraining as a stage of the one trainer (`qwen25.training.trainer`): stages of (sequence length, RoPE base,
token budget, LR schedule), one after another, with ABF (the RoPE base raised) between them.

The stage supplies the model (a preset, randomly initialised), the packed-shard loader sliced to this rank's
rows, the causal-LM loss over target tokens, and the held-out evaluation (loss and bits per byte by domain);
the loop, exact token-mean accumulation, checkpoints and metrics are the trainer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qwen25.data.loader import Batch, PackedLoader
from qwen25.data.shards import ShardSet
from qwen25.model import ConfigError, ModelConfig, build_model, get_preset
from qwen25.model.qwen2 import Qwen2ForCausalLM
from qwen25.pretraining.recipe import Recipe, RecipeError, StageSection, check_world
from qwen25.tokenizer import QwenTokenizer
from qwen25.training.distributed import DistInfo, all_reduce_sum
from qwen25.training.losses import causal_lm_loss, count_target_tokens, summarize_moe_logs
from qwen25.training.metrics import flops_per_token, matmul_peak_flops
from qwen25.training.optim import Schedule
from qwen25.training.trainer import Phase, Trainer


def model_config(recipe: Recipe, vocab_size: int, eot: int) -> ModelConfig:
    """The preset with the recipe's overrides; positions cover the longest stage unless an override says more."""
    try:
        cfg, _ = get_preset(recipe.model.preset)
    except KeyError as e:
        raise RecipeError(f"{recipe.source}: model.preset: {e.args[0]}") from None
    overrides = dict(recipe.model.overrides)
    longest = max(s.seq_len for s in recipe.stages)
    positions = overrides.pop("max_position_embeddings", longest)
    try:
        cfg = cfg.replace(**overrides)
    except (TypeError, ValueError, ConfigError) as e:
        raise RecipeError(f"{recipe.source}: model.overrides: {e}") from None
    if not isinstance(positions, int) or positions < longest:
        raise RecipeError(f"{recipe.source}: model.overrides.max_position_embeddings must be an integer >= the "
                          f"longest stage's seq_len ({longest}), got {positions!r}")
    if vocab_size > cfg.vocab_size:
        raise RecipeError(f"{recipe.source}: the tokenizer has {vocab_size} tokens but the model only "
                          f"{cfg.vocab_size} embedding rows (set model.overrides.vocab_size)")
    try:
        return cfg.replace(rope_theta=recipe.stages[0].rope_theta, bos_token_id=eot, eos_token_id=eot,
                           dtype="float32", max_position_embeddings=positions)
    except (TypeError, ValueError, ConfigError) as e:
        raise RecipeError(f"{recipe.source}: model: {e}") from None


def token_bytes(tok: QwenTokenizer, vocab_rows: int) -> torch.Tensor:
    """UTF-8 bytes each token stands for (0 for control tokens and padding rows): for bits per byte.
    In a byte-level vocabulary each character of a token's string is one byte."""
    out = torch.zeros(vocab_rows, dtype=torch.float64)
    for i in range(tok.num_regular_tokens):
        out[i] = len(tok.tok.id_to_token(i))
    return out


@dataclass
class EvalResult:
    loss: float  # nats per target token
    bpb: float  # bits per UTF-8 byte of the predicted text (control tokens excluded)
    by_domain: dict[str, float]  # bits per byte per domain


class RankSlices:
    """The trainer's step source: this rank's rows of the loader's global batch, cut into micro-batches."""

    def __init__(self, loader: PackedLoader, info: DistInfo, micro_batch: int) -> None:
        self.loader, self.info, self.micro = loader, info, micro_batch

    def next_step(self) -> list[Batch]:
        batch = self.loader.next_batch()
        rows = batch.input_ids.shape[0] // self.info.world
        local = batch.rows(self.info.rank * rows, (self.info.rank + 1) * rows)
        return [local.rows(start, start + self.micro) for start in range(0, rows, min(self.micro, rows))]

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


class Pretrainer:
    def __init__(self, recipe: Recipe, tok: QwenTokenizer, train_shards: ShardSet, heldout_shards: ShardSet,
                 info: DistInfo, resume: bool = False, log=print) -> None:
        self.r, self.tok, self.info, self.log = recipe, tok, info, log
        self.train_shards, self.heldout_shards = train_shards, heldout_shards
        check_world(recipe, info.world)
        self.cfg = model_config(recipe, tok.vocab_size, tok.endoftext_id)
        torch.manual_seed(recipe.seed)
        model = build_model(self.cfg, device=info.device, seed=recipe.seed)
        autocast = recipe.train.autocast_dtype or torch.float32
        peak = matmul_peak_flops(info.device, autocast, cache=Path.home() / ".cache" / "qwen25" / "matmul_peak.json")
        self.trainer = Trainer(model, recipe.train, info, recipe.directory, causal_lm_loss, count_target_tokens,
                               lr=recipe.stages[0].lr, log=log, peak_flops=peak,
                               summarize_logs=summarize_moe_logs if self.cfg.is_moe else None)
        self.token_bytes = token_bytes(tok, self.cfg.vocab_size).to(info.device)
        if resume:
            self.trainer.resume()
        else:
            self.trainer.start_fresh()

    @property
    def inner(self) -> Qwen2ForCausalLM:
        return self.trainer.inner

    @property
    def state(self) -> dict:
        return self.trainer.state

    @torch.no_grad()
    def evaluate(self, stage: StageSection) -> EvalResult:
        """Held-out loss on the same windows every time (a fresh loader with a fixed seed)."""
        model = self.trainer.model
        model.eval()
        micro, info = self.r.train.micro_batch, self.info
        rows = max(micro // info.world, 1) * info.world
        held = self.heldout_shards
        mixture = {d: w for d, w in self.r.data.mixture.items()
                   if d in held.domains and held.tokens(d) > stage.seq_len}  # a tiny split may lack a domain
        if not mixture:
            raise ValueError(f"{held.directory}: no domain has more than {stage.seq_len} held-out tokens")
        loader = PackedLoader(held, stage.seq_len, rows, mixture, seed=self.r.seed + 7,
                              document_masking=self.r.data.document_masking)
        domains = sorted(loader.names)
        sums = torch.zeros(3 + 2 * len(domains), dtype=torch.float64, device=info.device)
        d = info.device
        for _ in range(self.r.train.eval_batches):
            batch = loader.next_batch()
            per = rows // info.world
            mb = batch.rows(info.rank * per, (info.rank + 1) * per)
            with self.trainer.autocast():
                logits = model(mb.input_ids.to(d),
                                    position_ids=None if mb.position_ids is None else mb.position_ids.to(d),
                                    segment_ids=None if mb.segment_ids is None else mb.segment_ids.to(d)).logits
            labels = mb.labels.to(d)
            ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
            nbytes = self.token_bytes[labels]
            counted = nbytes > 0
            sums[0] += ce.sum().double()
            sums[1] += labels.numel()
            sums[2] += (ce * counted).sum().double()
            for row, domain in enumerate(mb.domains):
                k = 3 + 2 * domains.index(domain)
                sums[k] += (ce[row] * counted[row]).sum().double()
                sums[k + 1] += nbytes[row].sum()
        all_reduce_sum(sums, info)
        model.train()
        total_bytes = sum(sums[3 + 2 * i + 1] for i in range(len(domains)))
        by_domain = {dom: float(sums[3 + 2 * i] / math.log(2) / max(float(sums[3 + 2 * i + 1]), 1.0))
                     for i, dom in enumerate(domains) if sums[3 + 2 * i + 1] > 0}
        return EvalResult(loss=float(sums[0] / sums[1]), bpb=float(sums[2] / math.log(2) / max(float(total_bytes), 1.0)),
                          by_domain=by_domain)

    def run(self) -> list[dict]:
        """Train every stage from the current state; returns the metrics log."""
        r, info = self.r, self.info
        for index in range(self.trainer.state["phase"], len(r.stages)):
            stage = r.stages[index]
            self.inner.set_rope(stage.rope_theta, self.inner.config.rope_scaling)  # ABF: the stage's base
            loader = PackedLoader(self.train_shards, stage.seq_len, stage.batch, r.data.mixture, seed=r.seed,
                                  stage=index, long_fraction=stage.long_fraction,
                                  document_masking=r.data.document_masking)
            schedule = Schedule(stage.schedule, stage.lr, stage.steps, stage.warmup_steps, stage.min_lr_ratio,
                                stage.decay_fraction)
            phase = Phase(stage.name, stage.steps, schedule, RankSlices(loader, info, r.train.micro_batch),
                          info={"seq_len": stage.seq_len, "rope_theta": stage.rope_theta},
                          flops_per_token=flops_per_token(self.cfg, stage.seq_len))
            finished = self.trainer.fit(index, phase, evaluate=lambda stage=stage: self._evaluate(stage),
                                        checkpoint_extra=self._checkpoint_extra)
            if not finished:  # stopped by max_steps
                break
        return self.trainer.metrics.read() if info.main else []

    def _evaluate(self, stage: StageSection) -> dict:
        result = self.evaluate(stage)
        return {"eval_loss": result.loss, "eval_bpb": result.bpb, "eval_bpb_by_domain": result.by_domain,
                "tokens": self.trainer.state.get("tokens", 0)}

    def _checkpoint_extra(self) -> dict:
        return {"model_config": self.inner.config.to_hf_dict(), "recipe": self.r.to_dict()}
