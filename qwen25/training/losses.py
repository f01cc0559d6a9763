"""Loss functions the stages train with, in the trainer's form `loss_fn(model, batch) -> LossOutput`, plus the
public formulas they are built from.

Causal LM (pretraining, SFT): cross-entropy summed over target tokens (labels != -100) through the model's
chunked LM head; the unit is the target token. MoE models add the router's load-balancing loss of the same
forward (`router_aux_loss_coef * aux`), as transformers does when given labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


# Preference and RL losses (report §4.2-4.3) ---------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss on log-probs summed over each completion's tokens (one value per pair).

    loss = mean over pairs of -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h), with h the policy's log-ratio
    margin over the reference, (logp_w - ref_w) - (logp_l - ref_l), and e the label smoothing of conservative DPO
    (cDPO: each label flipped with probability e; 0 is plain DPO). Returns (loss, chosen_rewards, rejected_rewards),
    the implicit rewards beta x (logp - ref) per pair, detached."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen - rejected)
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), beta * chosen.detach(), beta * rejected.detach()


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """The reward model's pairwise loss, mean over pairs of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages: (r - mean of its group) / (std of its group + eps), the std with Bessel's
    correction (as TRL and the GRPO paper); `scale=False` only subtracts the mean (Dr. GRPO). `rewards` [N] holds
    the groups one after another (N = groups x group_size)."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size ({group_size}) entries, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


GRPO_AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")


def grpo_token_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float = 0.2, clip_high: float = 0.2, beta: float = 0.0,
                      ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token GRPO loss [B, T]: -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) with rho = pi / pi_old,
    plus beta x the k3 estimate of KL(pi || pi_ref) = pi_ref/pi - log(pi_ref/pi) - 1. Returns (loss, kl or None,
    clipped: bool [B, T] where the clipped branch was taken with a non-zero gradient cut)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
    kl = None
    if beta:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs (ref_logps)")
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        loss = loss + beta * kl
    return loss, kl, clipped


def grpo_aggregate(token_losses: torch.Tensor, mask: torch.Tensor, aggregation: str,
                   max_completion_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, units) whose ratio is the loss of the batch in one of the aggregation modes:
    token_mean: every completion token of the batch weighs the same (sum over tokens / tokens; TRL's "dapo", and
      "bnpo" within one batch);
    sequence_mean: each sequence's token mean, averaged over sequences (the GRPO paper; TRL's "grpo");
    dr_grpo: token sums over sequences x max_completion_length, a constant that adds no length bias (Dr. GRPO).
    Returning a sum and a unit count lets the trainer keep the mean exact over micro-batches and processes."""
    mask = mask.to(token_losses.dtype)
    per_token = token_losses * mask
    if aggregation == "token_mean":
        return per_token.sum(), mask.sum()
    if aggregation == "sequence_mean":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum(), torch.tensor(float(mask.shape[0]))
    if aggregation == "dr_grpo":
        return per_token.sum() / max_completion_length, torch.tensor(float(mask.shape[0]))
    raise ValueError(f"aggregation must be one of {', '.join(GRPO_AGGREGATIONS)}, got {aggregation!r}")


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              aggregation: str = "token_mean", clip_low: float = 0.2, clip_high: float = 0.2, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, max_completion_length: int | None = None) -> torch.Tensor:
    """The GRPO loss of one batch ([B, T] log-probs of the completion tokens, `mask` 1 on real tokens, [B]
    advantages); see `grpo_token_losses` and `grpo_aggregate`."""
    token_losses, _, _ = grpo_token_losses(logps, old_logps, advantages, clip_low, clip_high, beta, ref_logps)
    total, units = grpo_aggregate(token_losses, mask, aggregation, max_completion_length or mask.shape[1])
    return total / units.clamp(min=1.0)
