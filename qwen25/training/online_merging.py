"""The Online Merging Optimizer (Lu et al., arXiv 2405.17931; QwenLM/online_merging_optimizers): AdamW whose
update is merged, at every step, with the SFT model's task vector tau = theta_SFT - theta_base, the direction
SFT moved the pretrained model. Qwen2.5's DPO stage trains with it (report §4.2) to keep what SFT taught while
the preference loss pulls elsewhere (the "alignment tax").

With delta this step's AdamW update, reserve rate p and merging weight alpha:
- OnDARE: theta += (1 - alpha) DARE_p(delta) + alpha DARE_p(tau). DARE keeps each entry with probability p and
  scales the kept ones by 1/p (so the expected update is unchanged); tau's mask is drawn once and tau clamped to
  +-clip (1, as the reference code), delta's mask is drawn every step. `rescale` additionally restores the L1 norm
  of delta after the drop (and clamps it), as the reference's option of that name (off by default).
- OnTIES: both are trimmed to their top-p share by magnitude (tau once, delta every step); then TIES's sign
  election: the elected sign of an entry is the sign of tau + delta, and only the entries that agree with it are
  kept, theta += alpha tau_kept + (1 - alpha) delta_kept. Where the two disagree, the one larger in magnitude wins.
  `rescale` restores the L1 norm a trim removed (off by default, as the reference).

Release settings (SPEC §6): p = 0.01, alpha = 1e-7. With alpha = 0 the task vector takes no part (it is not even
built), and with p = 1 nothing is dropped: the optimizer is then exactly torch's AdamW, bit for bit.

Two departures from the reference code, both so that the merge-free case is AdamW: decoupled weight decay is
applied before the update as torch's AdamW does (the reference decays the updated weights), and bias correction
follows torch's AdamW (the reference uses the older transformers AdamW form; they differ only in where eps sits).

Under FSDP2 the parameters, gradients and optimizer states are DTensors sharded on dim 0; the task vector is
stored sharded the same way (so checkpoints reshard it like the moments). Every random mask is drawn for the full
tensor from a seed of (seed, parameter name, step), and top-p thresholds are taken on the full tensor, so N
processes make exactly the update one process makes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

MODES = ("ondare", "onties")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds (a view: in-place changes reach the DTensor)."""
    return t.to_local() if isinstance(t, DTensor) else t


def _full(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which `local` is this process's shard laid out as `like` (gathered under FSDP)."""
    if not isinstance(like, DTensor):
        return local
    return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape,
                              stride=like.stride(), run_check=False).full_tensor()


def _shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of `full` as `like` is sharded (no communication: every process holds `full`)."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def _seed(seed: int, name: str, step: int) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare_(t: torch.Tensor, reserve: float, generator: torch.Generator, rescale: bool = False) -> torch.Tensor:
    """Drop And REscale in place: keep each entry with probability `reserve`, scale kept entries by 1/reserve;
    `rescale` then restores the L1 norm of the input. Returns `t`."""
    if reserve >= 1:
        return t
    before = t.abs().sum() if rescale else None
    keep = torch.rand(t.shape, generator=generator, device=generator.device) < reserve
    t.mul_(keep.to(t.device)).div_(reserve)
    if rescale and before >= 1e-8:
        t.mul_(before / (t.abs().sum() + 1e-8))
    return t


def top_p_(t: torch.Tensor, reserve: float, rescale: bool = False) -> torch.Tensor:
    """Keep the int(reserve x numel) entries largest in magnitude (all of them when that is < 1, as the reference
    code), zero the rest, in place; `rescale` restores the L1 norm. Returns `t`."""
    k = int(reserve * t.numel())
    if reserve >= 1 or k < 1:
        return t
    before = t.abs().sum() if rescale else None
    flat = t.view(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k, sorted=False).indices] = True
    flat.mul_(keep)
    if rescale and before >= 1e-8:
        t.mul_(before / t.abs().sum())
    return t


def ties_merge(tau: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha tau + (1 - alpha) delta over the entries whose sign agrees with the elected sign, sign(tau + delta)
    (zero counts as positive, as the reference)."""
    elected = torch.where(tau + delta >= 0, 1.0, -1.0).to(delta.dtype)
    return alpha * tau * (tau.sign() == elected) + (1 - alpha) * delta * (delta.sign() == elected)


def task_vector(base: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """theta_reference - theta_base for one parameter (HF name), fp32."""
    for which, state in (("base", base), ("reference", reference)):
        if name not in state:
            raise ValueError(f"online merging: the {which} model has no parameter '{name}' (base and reference must "
                             "be the same architecture as the policy)")
    if base[name].shape != reference[name].shape:
        raise ValueError(f"online merging: '{name}' has shape {tuple(base[name].shape)} in the base model but "
                         f"{tuple(reference[name].shape)} in the reference")
    return reference[name].float() - base[name].float()


def parameter_name(name: str) -> str:
    """The HF name of a parameter seen through wrappers (activation checkpointing, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


class OnlineMergingAdamW(torch.optim.Optimizer):
    """AdamW with online merging (see the module docstring).

    named_groups: [{"params": [(name, parameter), ...], "weight_decay": wd}, ...] (names as in the HF checkpoint).
    base / reference: full state dicts of the pretrained and SFT models (needed when alpha > 0).
    """

    def __init__(self, named_groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, mode: str = "ondare", reserve: float = 0.01, alpha: float = 1e-7,
                 rescale: bool = False, clip: float = 1.0, seed: int = 0,
                 base: Mapping[str, torch.Tensor] | None = None,
                 reference: Mapping[str, torch.Tensor] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"online merging mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 < reserve <= 1:
            raise ValueError(f"online merging reserve rate must be in (0, 1], got {reserve}")
        if not 0 <= alpha < 1:
            raise ValueError(f"online merging alpha must be in [0, 1), got {alpha}")
        if alpha > 0 and (base is None or reference is None):
            raise ValueError("online merging with alpha > 0 needs the base and reference (SFT) models' weights")
        groups, self.names = [], {}
        for g in named_groups:
            params = []
            for name, p in g["params"]:
                self.names[p] = parameter_name(name)
                params.append(p)
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": params})
        super().__init__(groups, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0})
        self.mode, self.reserve, self.alpha, self.rescale, self.clip, self.seed = mode, reserve, alpha, rescale, clip, seed
        self._init_state(base, reference)

    @property
    def merging(self) -> bool:
        return self.alpha > 0 or self.reserve < 1

    @torch.no_grad()
    def _init_state(self, base, reference) -> None:
        """Every state tensor exists from the start (moments at zero, the processed task vector), so a checkpoint
        written before the first step has the same keys as any later one."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if self.alpha > 0:
                    name = self.names[p]
                    tau = task_vector(base, reference, name).to(_local(p).device)
                    if self.mode == "ondare":
                        g = torch.Generator(device=tau.device).manual_seed(_seed(self.seed, name, -1))
                        dare_(tau, self.reserve, g, self.rescale).clamp_(-self.clip, self.clip)
                    else:
                        top_p_(tau, self.reserve, self.rescale)
                    tau = tau.to(p.dtype)
                    if isinstance(p, DTensor):
                        tau = distribute_tensor(tau, p.device_mesh, p.placements, src_data_rank=None)
                    state["task_vector"] = tau

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                param, grad = _local(p), _local(p.grad)
                exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                state["step"] += 1
                step = float(state["step"])
                # torch's single-tensor AdamW, operation for operation
                if wd != 0:
                    param.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                if not self.merging:
                    param.addcdiv_(exp_avg, denom, value=-step_size)
                    continue
                delta = _full(exp_avg / denom * -step_size, p)
                param.add_(_shard(self._merge(delta, state, p, int(step)), p))
        return loss

    def _merge(self, delta: torch.Tensor, state: dict, p: torch.Tensor, step: int) -> torch.Tensor:
        """The merged update of one parameter, full size, from its full AdamW update `delta`."""
        tau = _full(_local(state["task_vector"]), p) if self.alpha > 0 else None
        if self.mode == "ondare":
            g = torch.Generator(device=delta.device).manual_seed(_seed(self.seed, self.names[p], step))
            dare_(delta, self.reserve, g, self.rescale)
            if self.rescale:
                delta.clamp_(-self.clip, self.clip)
            return delta if tau is None else (1 - self.alpha) * delta + self.alpha * tau
        top_p_(delta, self.reserve, self.rescale)
        return delta if tau is None else ties_merge(tau, delta, self.alpha)


def build_online_merging(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                         mode: str, reserve: float, alpha: float, rescale: bool = False, seed: int = 0,
                         base: Mapping[str, torch.Tensor] | None = None,
                         reference: Mapping[str, torch.Tensor] | None = None,
                         eps: float = 1e-8) -> OnlineMergingAdamW:
    """The optimizer over `model`'s trainable parameters, grouped as `build_adamw` groups them (decay on matrices
    only)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append((name, p))
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OnlineMergingAdamW(groups, lr, betas, eps, mode, reserve, alpha, rescale, seed=seed, base=base,
                              reference=reference)
