"""The one training loop every stage uses (pretraining, SFT, reward model, DPO, GRPO).

A stage brings a model, its data and a loss function `loss_fn(model, micro_batch) -> (loss_sum, n_units, logs)`:
the loss summed over the units it declares (target tokens, sequences, pairs), how many units that was, and
numbers to log. The trainer owns the rest: micro-batches and gradient accumulation, the exact mean over every
unit of the global batch (counted on every rank before any backward, all-reduced, so k micro-batches give the
update of one k-times batch and N processes the update of one), gradient sync on the last micro-batch only,
clipping, a guard against non-finite losses and gradients, the learning-rate schedule, metrics (JSONL + tqdm),
periodic evaluation, atomic checkpoints with resume, and FSDP2/DDP wrapping.

Why the unit count comes first: scaling each micro-batch's summed loss by world / N before its backward is the
arithmetic that makes accumulation and data parallelism exact (DDP/FSDP average gradients over ranks), and N is
only known once every rank has counted its micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from tqdm import tqdm

from qwen25.model.config import torch_dtype
from qwen25.training.checkpoint import latest_intact_checkpoint, load_checkpoint, save_checkpoint
from qwen25.training.distributed import DistInfo, all_reduce_sum, apply_activation_checkpointing, unwrap, wrap_model
from qwen25.training.metrics import MetricsLog, memory_mb
from qwen25.training.optim import Schedule, build_adamw, set_lr


@dataclass
class TrainConfig:
    """The `[train]` table every stage recipe shares."""

    micro_batch: int = 16  # rows per forward pass on each process
    dtype: str = "bfloat16"  # autocast dtype; "float32" trains without autocast
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0: no clipping
    eval_every: int = 100  # steps; 0: only at the end of each phase
    eval_batches: int = 8
    checkpoint_every: int = 200  # steps; 0: only at the end of each phase
    keep_last: int = 2  # checkpoints kept (>= 1)
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "fsdp"  # used when launched with torchrun: "fsdp", "ddp" or "none"
    device: str = "auto"
    max_steps: int = 0  # stop after this many steps in total (0: run every phase to its budget)
    nonfinite: str = "stop"  # a NaN/Inf loss or gradient norm: "stop" the run, or "skip" the step (counted)

    def validate(self, where: str = "train") -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"{where}.{key} {why}")

        if self.micro_batch < 1:
            fail("micro_batch", f"must be >= 1, got {self.micro_batch}")
        if self.dtype not in ("bfloat16", "float32", "float16"):
            fail("dtype", f"must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            fail("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.grad_clip < 0:
            fail("grad_clip", f"must be >= 0 (0: off), got {self.grad_clip}")
        for key in ("eval_every", "checkpoint_every", "max_steps"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if self.eval_batches < 1:
            fail("eval_batches", f"must be >= 1, got {self.eval_batches}")
        if self.keep_last < 1:
            fail("keep_last", f"must be >= 1 (the newest checkpoint is always kept), got {self.keep_last}")
        if self.parallel not in ("fsdp", "ddp", "none"):
            fail("parallel", f"must be 'fsdp', 'ddp' or 'none', got {self.parallel!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            fail("device", f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.nonfinite not in ("stop", "skip"):
            fail("nonfinite", f"must be 'stop' or 'skip', got {self.nonfinite!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.dtype == "float32" else torch_dtype(self.dtype)


class LossOutput(NamedTuple):
    """What a loss function returns for one micro-batch.

    loss_sum: summed over the micro-batch's units (the trainer divides by the global count).
    n_units: how many units that sum covers (checked against `count_units`).
    logs: tensors (any shape) or numbers to log; summed over micro-batches and ranks, then turned into logged
      numbers by the trainer's `summarize_logs` (default: each scalar sum as is).
    extra_loss: a term that is already a mean over its micro-batch (the MoE load-balancing loss); it is added
      divided by the number of micro-batches, and averaged over ranks by the gradient reduction.
    """

    loss_sum: torch.Tensor
    n_units: int | torch.Tensor
    logs: dict[str, float | torch.Tensor] = {}
    extra_loss: torch.Tensor | None = None


LossFn = Callable[[torch.nn.Module, Any], LossOutput | tuple]


class StepSource(Protocol):
    """A stage's data: this rank's micro-batches for the next optimizer step, and a resumable position."""

    def next_step(self) -> Sequence[Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclass
class Phase:
    """One stretch of training with its own data and schedule (a pretraining stage, an SFT phase, an epoch)."""

    name: str
    steps: int
    schedule: Schedule
    source: StepSource
    info: dict = field(default_factory=dict)  # logged with every record of the phase (e.g. seq_len, rope_theta)
    flops_per_token: float = 0.0  # for MFU; 0: not logged


def _as_loss_output(value) -> LossOutput:
    return value if isinstance(value, LossOutput) else LossOutput(*value)


def _add_logs(into: dict[str, torch.Tensor], logs: dict, device: torch.device) -> None:
    for key, value in logs.items():
        value = (value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))).double().to(device)
        into[key] = into[key] + value if key in into else value


class Trainer:
    """Wraps `model` (built or loaded by the caller, on `info.device`) for the run and trains it.

    state: the run's position ({"step", "phase", "phase_step", "source", ...}); stages may add their own keys,
    which are saved in checkpoints and restored by `resume()`.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, info: DistInfo, directory: str | Path,
                 loss_fn: LossFn, count_units: Callable[[Any], int], lr: float = 1e-3,
                 optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
                 log: Callable[[str], None] = print, peak_flops: float = 0.0,
                 summarize_logs: Callable[[dict[str, torch.Tensor], int], dict[str, float]] | None = None) -> None:
        config.validate()
        self.config, self.info, self.log = config, info, log
        self.directory = Path(directory)
        self.loss_fn, self.count_units = loss_fn, count_units
        self.metrics = MetricsLog(self.directory / "metrics.jsonl")
        self.peak_flops = peak_flops
        self.summarize_logs = summarize_logs  # (log sums, micro-batches over all ranks) -> logged numbers
        if config.activation_checkpointing:
            apply_activation_checkpointing(model)
        if config.compile:
            for layer in model.model.layers:
                layer.compile()
        self.model = wrap_model(model, config.parallel, info)
        self.optimizer = (optimizer(self.model) if optimizer else
                          build_adamw(self.model, lr, config.weight_decay, tuple(config.betas)))
        self.state: dict[str, Any] = {"step": 0, "phase": 0, "phase_step": 0, "source": None, "skipped_steps": 0}
        self.last_checkpoint: Path | None = None

    @property
    def inner(self) -> torch.nn.Module:
        """The model itself (DDP's wrapper removed; FSDP2 shards in place)."""
        return unwrap(self.model)

    def autocast(self):
        dtype = self.config.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _grad_sync(self, last: bool):
        """Reduce gradients only on the last micro-batch of a step, for DDP (a context) and FSDP2 (a flag)."""
        if not self.info.enabled:
            return contextlib.nullcontext()
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext() if last else self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def global_units(self, micro_batches: Sequence[Any]) -> int:
        local = sum(int(self.count_units(mb)) for mb in micro_batches)
        total = all_reduce_sum(torch.tensor(float(local), dtype=torch.float64, device=self.info.device), self.info)
        return int(total)

    def accumulate_gradients(self, micro_batches: Sequence[Any]) -> tuple[float, dict[str, float]]:
        """Forward and backward over this rank's micro-batches of one global batch; returns the mean loss over
        every unit of the global batch and the logs (summed over micro-batches and ranks, then `summarize`d)."""
        n_units = self.global_units(micro_batches)
        if n_units <= 0:
            raise ValueError("a training step has no units to average over (every label masked?): check the data")
        scale = self.info.world / n_units
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        logs: dict[str, torch.Tensor] = {}
        counted = expected = 0
        for i, mb in enumerate(micro_batches):
            with self._grad_sync(last=i == len(micro_batches) - 1):
                with self.autocast():
                    out = _as_loss_output(self.loss_fn(self.model, mb))
                loss = out.loss_sum * scale
                if out.extra_loss is not None:
                    loss = loss + out.extra_loss / len(micro_batches)
                loss.backward()
            counted += int(out.n_units)
            expected += int(self.count_units(mb))
            total += out.loss_sum.detach().double()
            _add_logs(logs, out.logs, self.info.device)  # no device sync before the next micro-batch's backward
        if counted != expected:
            raise RuntimeError(f"the loss function summed over {counted} units but count_units gave {expected}: "
                               "the two must agree")
        reduced = self._reduce([total], logs)
        return float(reduced.pop("__total__") / n_units), {**self.summarize(reduced, len(micro_batches)),
                                                             "units": float(n_units)}

    def _reduce(self, totals: list[torch.Tensor], logs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """All-reduce the totals and every log tensor in one collective."""
        names = sorted(logs)
        flat = torch.cat([t.reshape(-1).double() for t in totals] + [logs[k].reshape(-1) for k in names])
        all_reduce_sum(flat, self.info)
        out: dict[str, Any] = {}
        pos = 0
        for i, t in enumerate(totals):
            out["__total__" if i == 0 else f"__total{i}__"] = flat[pos:pos + t.numel()].view(t.shape)
            pos += t.numel()
        for k in names:
            out[k] = flat[pos:pos + logs[k].numel()].view(logs[k].shape)
            pos += logs[k].numel()
        return out

    def summarize(self, logs: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
        """Turn reduced log sums into logged numbers: `summarize_logs` when the stage gave one, else each scalar
        as a float."""
        if self.summarize_logs is not None:
            return self.summarize_logs(logs, micro_batches * self.info.world)
        return {k: float(v) for k, v in logs.items() if v.numel() == 1}

    def step(self, micro_batches: Sequence[Any]) -> dict[str, float]:
        """One optimizer step: accumulate, clip, guard, update. Returns loss, grad_norm and the loss's logs."""
        loss, logs = self.accumulate_gradients(micro_batches)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.zeros(())
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            where = (f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else
                     "no checkpoint written yet")
            if self.config.nonfinite == "stop":
                raise NonFiniteError(f"step {self.state['step'] + 1}: loss {loss} / gradient norm {grad_norm} is not "
                                     f"finite; stopped before updating the weights ({where}). Set "
                                     "train.nonfinite = \"skip\" to skip such steps instead.")
            self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + 1
            self.log(f"step {self.state['step'] + 1}: non-finite loss/gradient, step skipped "
                     f"({self.state['skipped_steps']} so far)")
            return {"loss": loss, "grad_norm": grad_norm, "skipped": 1.0, **logs}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "grad_norm": grad_norm, **logs}

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Any], loss_fn: LossFn | None = None) -> dict[str, float]:
        """The exact mean loss over every unit of `batches` (this rank's share), all-reduced; plus the logs."""
        loss_fn = loss_fn or self.loss_fn
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        units = torch.zeros((), dtype=torch.float64, device=self.info.device)
        logs: dict[str, torch.Tensor] = {}
        for mb in batches:
            with self.autocast():
                out = _as_loss_output(loss_fn(self.model, mb))
            total += out.loss_sum.double()
            units += float(out.n_units)
            _add_logs(logs, out.logs, self.info.device)
        reduced = self._reduce([total, units], logs)
        self.model.train(was_training)
        n = float(reduced.pop("__total1__"))
        return {"loss": float(reduced.pop("__total__")) / max(n, 1.0), "units": n,
                **self.summarize(reduced, len(batches))}

    # checkpoints ---------------------------------------------------------------------------------------------

    def save(self, extra: dict | None = None) -> Path:
        """An atomic checkpoint of model, optimizer and `state` (plus `extra`), keeping the newest `keep_last`."""
        path = save_checkpoint(self.directory / "checkpoints", self.state["step"], self.model, self.optimizer,
                               {**self.state, **(extra or {})}, self.config.keep_last, self.info, self.log)
        self.last_checkpoint = path
        return path

    def resume(self) -> dict | None:
        """Restore the newest intact checkpoint (a damaged newer one is reported and passed over); returns its
        state, or None when there is none. Metrics written after that step are dropped."""
        found = latest_intact_checkpoint(self.directory / "checkpoints", self.log if self.info.main else None)
        if found is None:
            if self.info.main:
                self.metrics.path.unlink(missing_ok=True)
            return None
        state = load_checkpoint(found, self.model, self.optimizer)
        self.state.update(state)
        self.last_checkpoint = found
        if self.info.main:
            self.metrics.truncate_after(self.state["step"])
        self.log(f"resumed from {found} at step {self.state['step']}")
        return state

    def start_fresh(self) -> None:
        if self.info.main:
            self.metrics.path.unlink(missing_ok=True)

    # the loop ------------------------------------------------------------------------------------------------

    def write(self, record: dict) -> None:
        if self.info.main:
            self.metrics.write(record)

    def fit(self, phase_index: int, phase: Phase, evaluate: Callable[[], dict] | None = None,
            checkpoint_extra: Callable[[], dict] | None = None, total_steps: int | None = None) -> bool:
        """Train one phase from the current state to its budget. Returns False when `max_steps` stopped it.

        evaluate: returns a dict of eval metrics (logged with the step); run at the start of the phase, every
        `eval_every` steps and at its end. checkpoint_extra: stage state saved beside the trainer's.
        """
        cfg, info = self.config, self.info
        if self.state["phase"] != phase_index or self.state.get("source") is None:
            self.state.update(phase=phase_index, phase_step=0, source=None)
        else:
            phase.source.load_state_dict(self.state["source"])
        base = {"phase": phase_index, "phase_name": phase.name, **phase.info}
        if self.state["phase_step"] == 0:
            self.write({"step": self.state["step"], **base, "event": "phase_start", "steps": phase.steps})
            if evaluate is not None:
                self.write({"step": self.state["step"], **base, **evaluate()})
        bar = tqdm(total=phase.steps, initial=self.state["phase_step"], disable=not info.main, dynamic_ncols=True,
                   desc=phase.name)
        self.model.train()
        try:
            while self.state["phase_step"] < phase.steps:
                if cfg.max_steps and self.state["step"] >= cfg.max_steps:
                    return False
                lr = phase.schedule(self.state["phase_step"])
                set_lr(self.optimizer, lr)
                t0 = time.perf_counter()
                micro_batches = phase.source.next_step()
                tokens = self._tokens(micro_batches)
                result = self.step(micro_batches)
                dt = time.perf_counter() - t0
                self.state["step"] += 1
                self.state["phase_step"] += 1
                self.state["tokens"] = self.state.get("tokens", 0) + tokens
                self.state["source"] = phase.source.state_dict()
                record = {"step": self.state["step"], **base, **result, "lr": lr, "tokens": self.state["tokens"],
                          "tokens_per_s": tokens / dt, "memory_mb": memory_mb(info.device), "step_time_s": dt}
                if phase.flops_per_token and self.peak_flops:
                    record["mfu"] = phase.flops_per_token * tokens / dt / (self.peak_flops * info.world)
                self.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{result['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens / dt:,.0f}")
                end = self.state["phase_step"] == phase.steps
                if evaluate is not None and (cfg.eval_every and self.state["phase_step"] % cfg.eval_every == 0 or end):
                    self.write({"step": self.state["step"], **base, **evaluate()})
                if cfg.checkpoint_every and self.state["step"] % cfg.checkpoint_every == 0 or end:
                    self.save(checkpoint_extra() if checkpoint_extra else None)
        finally:
            bar.close()
        return True

    def _tokens(self, micro_batches: Sequence[Any]) -> int:
        """Tokens this step processes on all ranks (rows x length of every micro-batch's input_ids)."""
        local = sum(mb.input_ids.numel() for mb in micro_batches if hasattr(mb, "input_ids"))
        if not self.info.enabled:
            return local
        return int(all_reduce_sum(torch.tensor(float(local), dtype=torch.float64, device=self.info.device), self.info))
