"""Loss functions the stages train with, in the trainer's form `loss_fn(model, batch) -> LossOutput`, plus the
public formulas they are built from.

Causal LM (pretraining, SFT): cross-entropy summed over target tokens (labels != -100) through the model's
chunked LM head; the unit is the target token. MoE models add the router's load-balancing loss of the same
forward (`router_aux_loss_coef * aux`), as transformers does when given labels.
"""

from __future__ import annotations

import torch

from qwen25.training.trainer import LossOutput


def _on(model: torch.nn.Module, t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(next(model.parameters()).device)


def count_target_tokens(batch) -> int:
    """The causal-LM unit count of a batch: positions whose label is not -100."""
    return int((batch.labels != -100).sum())


def causal_lm_loss(model: torch.nn.Module, batch) -> LossOutput:
    """Summed next-token cross-entropy over `batch.labels != -100` (`batch`: input_ids, labels, and optionally
    position_ids / segment_ids for packed rows)."""
    out = model(_on(model, batch.input_ids), labels=_on(model, batch.labels),
                position_ids=_on(model, getattr(batch, "position_ids", None)),
                segment_ids=_on(model, getattr(batch, "segment_ids", None)))
    logs = {}
    extra = None
    if out.router is not None:
        extra = out.router.weighted_aux_loss
        logs = {"aux_loss": out.router.aux_loss.detach(), "expert_load": out.router.tokens_per_expert.sum(0).detach()}
    return LossOutput(out.loss, count_target_tokens(batch), logs, extra)


def summarize_moe_logs(logs: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
    """Mean aux loss over micro-batches and ranks, and the busiest expert's load over the mean load."""
    out = {k: float(v) for k, v in logs.items() if v.numel() == 1 and k != "aux_loss"}
    if "aux_loss" in logs:
        out["aux_loss"] = float(logs["aux_loss"]) / micro_batches
    if "expert_load" in logs:
        load = logs["expert_load"]
        out["expert_load_max_over_mean"] = float(load.max() / load.mean())
    return out
