"""The pretraining loop: stages of (sequence length, RoPE base, token budget, LR schedule), one after another.

The loss of a step is the exact mean over every target token in the global batch: each micro-batch returns
its summed cross-entropy, divided by the global token count (times the world size, which FSDP/DDP's
gradient averaging divides back out). So k micro-batches give the same update as one batch k times larger,
and N processes the same as one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from qwen25.data.loader import Batch, PackedLoader
from qwen25.data.shards import ShardSet
from qwen25.model import ModelConfig, build_model, get_preset
from qwen25.model.qwen2 import Qwen2ForCausalLM, torch_dtype
from qwen25.pretraining.recipe import Recipe, StageSection
from qwen25.tokenizer import QwenTokenizer
from qwen25.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from qwen25.training.distributed import DistInfo, all_reduce_sum, unwrap, wrap_model
from qwen25.training.metrics import MetricsLog, flops_per_token, matmul_peak_flops, memory_mb
from qwen25.training.optim import Schedule, build_adamw, set_lr


def model_config(recipe: Recipe, tok: QwenTokenizer) -> ModelConfig:
    cfg, _ = get_preset(recipe.model.preset)
    try:
        cfg = cfg.replace(**recipe.model.overrides)
    except TypeError as e:
        raise ValueError(f"{recipe.source}: model.overrides: {e}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"{recipe.source}: the tokenizer has {tok.vocab_size} tokens but the model only "
                         f"{cfg.vocab_size} embedding rows (set model.overrides.vocab_size)")
    eot = tok.endoftext_id
    return cfg.replace(rope_theta=recipe.stages[0].rope_theta, bos_token_id=eot, eos_token_id=eot,
                       dtype="float32", max_position_embeddings=max(s.seq_len for s in recipe.stages))


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


class Pretrainer:
    def __init__(self, recipe: Recipe, tok: QwenTokenizer, train_shards: ShardSet, heldout_shards: ShardSet,
                 info: DistInfo, resume: bool = False, log=print) -> None:
        self.r, self.tok, self.info, self.log = recipe, tok, info, log
        self.train_shards, self.heldout_shards = train_shards, heldout_shards
        self.dir = recipe.directory
        self.metrics = MetricsLog(self.dir / "metrics.jsonl")
        self.cfg = model_config(recipe, tok)
        self.autocast = torch_dtype(recipe.train.dtype) if recipe.train.dtype != "float32" else None

        torch.manual_seed(recipe.seed)
        model = build_model(self.cfg, device=info.device, seed=recipe.seed)
        model.set_fused_projections(False)  # an inference optimisation; training owns the parameters
        model.model.checkpoint_layers = recipe.train.activation_checkpointing
        if recipe.train.compile:
            for layer in model.model.layers:
                layer.compile()
        self.model = wrap_model(model, recipe.train.parallel, info)
        self.optimizer = build_adamw(self.model, recipe.stages[0].lr, recipe.train.weight_decay,
                                     tuple(recipe.train.betas))
        self.token_bytes = token_bytes(tok, self.cfg.vocab_size).to(info.device)
        self.peak = matmul_peak_flops(info.device, self.autocast or torch.float32,
                                      cache=Path.home() / ".cache" / "qwen25" / "matmul_peak.json")
        self.state = {"step": 0, "stage": 0, "stage_step": 0, "tokens": 0, "loader": None}
        self.router_log: dict = {}
        found = checkpoints(self.dir / "checkpoints") if resume else []
        if found:
            self.state = load_checkpoint(found[-1], self.model, self.optimizer)
            self.metrics.truncate_after(self.state["step"]) if info.main else None
            log(f"resumed from {found[-1]} at step {self.state['step']} (stage {self.state['stage']})")
        elif info.main:  # a fresh start, --resume with no checkpoint yet included: no stale records
            self.metrics.path.unlink(missing_ok=True)

    @property
    def inner(self) -> Qwen2ForCausalLM:
        return unwrap(self.model)

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.autocast)

    def _forward_loss(self, mb: Batch) -> torch.Tensor:
        d = self.info.device
        with self._autocast():
            return self.model(mb.input_ids.to(d), labels=mb.labels.to(d),
                              position_ids=None if mb.position_ids is None else mb.position_ids.to(d),
                              segment_ids=None if mb.segment_ids is None else mb.segment_ids.to(d))

    def _grad_sync(self, last: bool):
        """Reduce gradients only on the last micro-batch of a step; the one place that switches it, for DDP
        (a context) and FSDP2 (a flag that stays set until changed)."""
        if not self.info.enabled:
            return contextlib.nullcontext()
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext() if last else self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One optimizer step on a global batch; returns (mean loss, grad norm before clipping)."""
        loss = self.accumulate_gradients(batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.r.train.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, float(grad_norm)

    def accumulate_gradients(self, batch: Batch) -> float:
        """Forward and backward over this process's rows of a global batch, in micro-batches; returns the mean
        loss over every target of the global batch.

        MoE models add `router_aux_loss_coef * aux` per micro-batch, averaged over micro-batches (and over
        processes by the gradient averaging); the aux loss and expert load are kept in `self.router_log`."""
        info, micro = self.info, self.r.train.micro_batch
        rows = batch.input_ids.shape[0] // info.world
        local = batch.rows(info.rank * rows, (info.rank + 1) * rows)
        n_targets = int((batch.labels != -100).sum())  # the global count: every rank sees the whole batch
        scale = info.world / n_targets
        total = torch.zeros((), dtype=torch.float64, device=info.device)
        starts = list(range(0, rows, min(micro, rows)))
        aux, load = 0.0, None
        for i, start in enumerate(starts):
            with self._grad_sync(last=i == len(starts) - 1):
                loss_sum = self._forward_loss(local.rows(start, start + micro))
                loss = loss_sum * scale
                stats = self.inner.router_stats()
                if stats is not None:
                    loss = loss + stats.weighted_aux_loss / len(starts)
                    aux = aux + stats.aux_loss.detach().double() / len(starts)  # no device sync before backward
                    load = stats.tokens_per_expert if load is None else load + stats.tokens_per_expert
                loss.backward()
            total += loss_sum.detach().double()
        if load is not None:
            per_expert = load.sum(0).double()
            self.router_log = {"aux_loss": float(aux),
                               "expert_load_max_over_mean": float(per_expert.max() / per_expert.mean())}
        return float(all_reduce_sum(total, info) / n_targets)

    @torch.no_grad()
    def evaluate(self, stage: StageSection) -> EvalResult:
        """Held-out loss on the same windows every time (a fresh loader with a fixed seed)."""
        self.model.eval()
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
            with self._autocast():
                logits = self.model(mb.input_ids.to(d),
                                    position_ids=None if mb.position_ids is None else mb.position_ids.to(d),
                                    segment_ids=None if mb.segment_ids is None else mb.segment_ids.to(d))
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
        self.model.train()
        total_bytes = sum(sums[3 + 2 * i + 1] for i in range(len(domains)))
        by_domain = {dom: float(sums[3 + 2 * i] / math.log(2) / max(float(sums[3 + 2 * i + 1]), 1.0))
                     for i, dom in enumerate(domains) if sums[3 + 2 * i + 1] > 0}
        return EvalResult(loss=float(sums[0] / sums[1]), bpb=float(sums[2] / math.log(2) / max(float(total_bytes), 1.0)),
                          by_domain=by_domain)

    def _checkpoint(self, loader: PackedLoader) -> None:
        state = {**self.state, "loader": loader.state_dict(), "model_config": self.inner.config.to_hf_dict(),
                 "recipe": self.r.to_dict()}
        save_checkpoint(self.dir / "checkpoints", self.state["step"], self.model, self.optimizer, state,
                        self.r.train.keep_last, self.info)

    def _eval_and_log(self, stage_idx: int, stage: StageSection) -> EvalResult:
        result = self.evaluate(stage)
        if self.info.main:
            self.metrics.write({"step": self.state["step"], "stage": stage_idx, "stage_name": stage.name,
                                "eval_loss": result.loss, "eval_bpb": result.bpb, "eval_bpb_by_domain": result.by_domain,
                                "tokens": self.state["tokens"], "seq_len": stage.seq_len})
        return result

    def run(self) -> list[dict]:
        """Train every stage from the current state; returns the metrics log."""
        r, info = self.r, self.info
        total_steps = sum(s.steps for s in r.stages)
        if r.train.max_steps:
            total_steps = min(total_steps, r.train.max_steps)
        bar = tqdm(total=total_steps, initial=self.state["step"], disable=not info.main, desc=r.name,
                   dynamic_ncols=True)
        self.model.train()
        for stage_idx in range(self.state["stage"], len(r.stages)):
            stage = r.stages[stage_idx]
            if stage.batch % info.world or (stage.batch // info.world) % min(r.train.micro_batch, stage.batch // info.world):
                raise ValueError(f"{r.source}: stages[{stage_idx}].batch {stage.batch} does not split into "
                                 f"{info.world} processes x micro_batch {r.train.micro_batch}")
            self.inner.set_rope(stage.rope_theta, self.inner.config.rope_scaling)  # ABF: the stage's base
            loader = PackedLoader(self.train_shards, stage.seq_len, stage.batch, r.data.mixture, seed=r.seed,
                                  stage=stage_idx, long_fraction=stage.long_fraction,
                                  document_masking=r.data.document_masking)
            if self.state["stage"] == stage_idx and self.state["loader"] is not None:
                loader.load_state_dict(self.state["loader"])
            else:
                self.state.update(stage=stage_idx, stage_step=0)
            schedule = Schedule(stage.schedule, stage.lr, stage.steps, stage.warmup_steps, stage.min_lr_ratio,
                                stage.decay_fraction)
            if self.state["stage_step"] == 0:
                if info.main:
                    self.metrics.write({"step": self.state["step"], "stage": stage_idx, "stage_name": stage.name,
                                        "event": "stage_start", "seq_len": stage.seq_len,
                                        "rope_theta": stage.rope_theta, "steps": stage.steps})
                self._eval_and_log(stage_idx, stage)
            tokens_per_step = stage.batch * stage.seq_len
            flops = flops_per_token(self.cfg, stage.seq_len)
            while self.state["stage_step"] < stage.steps:
                if r.train.max_steps and self.state["step"] >= r.train.max_steps:
                    break
                lr = schedule(self.state["stage_step"])
                set_lr(self.optimizer, lr)
                t0 = time.perf_counter()
                loss, grad_norm = self.train_step(loader.next_batch())
                dt = time.perf_counter() - t0
                self.state["step"] += 1
                self.state["stage_step"] += 1
                self.state["tokens"] += tokens_per_step
                tps = tokens_per_step / dt
                if info.main:
                    self.metrics.write({"step": self.state["step"], "stage": stage_idx, "loss": loss, "lr": lr,
                                        "grad_norm": grad_norm, "tokens": self.state["tokens"], "tokens_per_s": tps,
                                        "mfu": flops * tps / (self.peak * info.world), "memory_mb": memory_mb(info.device),
                                        "step_time_s": dt, **self.router_log})
                    bar.update(1)
                    bar.set_postfix(stage=stage.name, loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                self.state["loader"] = loader.state_dict()
                end_of_stage = self.state["stage_step"] == stage.steps
                if r.train.eval_every and self.state["stage_step"] % r.train.eval_every == 0 or end_of_stage:
                    self._eval_and_log(stage_idx, stage)
                if r.train.checkpoint_every and self.state["step"] % r.train.checkpoint_every == 0 or end_of_stage:
                    self._checkpoint(loader)
            if self.state["stage_step"] < stage.steps:  # stopped by max_steps
                break
            if stage_idx + 1 < len(r.stages):
                self.state.update(stage=stage_idx + 1, stage_step=0, loader=None)
        bar.close()
        return self.metrics.read() if info.main else []

