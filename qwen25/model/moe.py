"""The Qwen2-MoE feed-forward block: fine-grained routed experts plus a gated shared expert (SPEC §2).

The math is transformers' `modeling_qwen2_moe.py`. The router takes a softmax in fp32 over *all* experts and
then the top k (Mixtral does top-k first and softmax over the k), so the k weights sum to less than one
unless `norm_topk_prob` renormalises them. Every expert is a SwiGLU MLP. A shared expert sees every token and
is scaled per token by sigmoid(x @ w_sg).

Dispatch is dropless: the (token, slot) pairs are sorted by expert, each expert runs once on its contiguous
group (one grouped matmul where PyTorch has a kernel for it, else a loop over experts, never over tokens),
and the weighted outputs are added back to their tokens.

In memory the experts of a layer are stacked, `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj`
[E, H, I] (transformers' own in-memory layout), so the grouped matmul reads them as they are; `checkpoint.py`
reads and writes the per-expert HF keys (`mlp.experts.{e}.gate_proj.weight`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qwen25.model.config import ModelConfig
from qwen25.model.qwen2 import MLP, Linear


def grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `F.grouped_mm` runs this product: CPU in any float dtype, CUDA in bf16 on SM80+ (its documented
    scope), with the 16-byte row and base alignment its kernels require."""
    if not hasattr(F, "grouped_mm") or x.dtype != weight.dtype:
        return False
    if x.device.type == "cuda":
        if x.dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device) < (8, 0):
            return False
    elif x.device.type != "cpu":
        return False
    size = x.element_size()
    return (all(n * size % 16 == 0 for n in weight.shape[1:])
            and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x [S, in] with rows grouped by expert (counts[e] rows of expert e, in expert order); weight [E, out, in].
    Returns [S, out], each group multiplied by its own expert's weight."""
    if grouped_mm_usable(x, weight):
        return F.grouped_mm(x, weight.transpose(1, 2), offs=counts.cumsum(0, dtype=torch.int32))
    groups = x.split(counts.tolist())
    return torch.cat([F.linear(g, weight[e]) for e, g in enumerate(groups) if len(g)])


class Experts(nn.Module):
    """E SwiGLU experts, stacked: gate_up_proj [E, 2I, H] (gate rows, then up rows), down_proj [E, H, I]."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; expert_ids and weights [N, k]. Returns sum_k weights[:, k] * expert_{ids[:, k]}(x), [N, H]."""
        k = expert_ids.shape[1]
        flat = expert_ids.reshape(-1)
        order = flat.argsort(stable=True)  # (token, slot) pairs, grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts)
        token = order // k
        gate_up, down = self.gate_up_proj, self.down_proj
        rows = x[token]  # [N*k, H]
        if torch.is_autocast_enabled(x.device.type):
            # grouped_mm is not autocast-aware: give the experts the dtype autocast gives a linear layer.
            dtype = torch.get_autocast_dtype(x.device.type)
            rows, gate_up, down = rows.to(dtype), gate_up.to(dtype), down.to(dtype)
        gate, up = grouped_linear(rows, gate_up, counts).chunk(2, dim=-1)
        out = grouped_linear(F.silu(gate) * up, down, counts)  # [N*k, H]
        out = out * weights.reshape(-1)[order].unsqueeze(-1).to(out.dtype)
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))


class SparseMoeBlock(nn.Module):
    """Router + routed experts + gated shared expert; replaces the dense MLP in MoE layers.

    After each forward, `router_probs` [N, E] (fp32) and `selected_experts` [N, k] hold this layer's routing
    for `router_stats` (the aux loss and per-expert load); they are the tensors the forward itself used.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(cfg.hidden_size, 1, bias=False)
        self.router_probs: torch.Tensor | None = None
        self.selected_experts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        self.router_probs, self.selected_experts = probs, experts
        routed = self.experts(x, experts, weights.to(logits.dtype))
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return (routed + shared).view(shape)


@dataclass
class RouterStats:
    """Routing of the last forward over every MoE layer, padding excluded.

    The training loss is `ce + stats.weighted_aux_loss`, i.e. `ce + router_aux_loss_coef * aux_loss`, exactly
    what transformers' Qwen2MoeForCausalLM adds when given labels.
    """

    aux_loss: torch.Tensor  # scalar, differentiable with respect to the routers (transformers' `aux_loss`)
    aux_loss_coef: float
    tokens_per_expert: torch.Tensor  # [MoE layers, E]: (token, slot) assignments each expert received
    layers: list[int]  # the decoder layer index of each row of tokens_per_expert

    @property
    def weighted_aux_loss(self) -> torch.Tensor:
        return self.aux_loss_coef * self.aux_loss


def router_stats(model: nn.Module) -> RouterStats | None:
    """Statistics of the last forward of `model` (None for a dense model or before any forward).

    The aux loss is transformers' `load_balancing_loss_func`, pooled over all MoE layers: with f_e the share of
    (token, slot) assignments that went to expert e (the f_e sum to k) and P_e the mean router probability of
    e, both averaged over layers and real tokens, aux = E * sum_e f_e * P_e. Padding (0 in the attention mask
    of that forward) counts in neither.
    """
    decoder = model.model if hasattr(model, "model") else model
    found = [(i, layer.mlp) for i, layer in enumerate(decoder.layers) if isinstance(layer.mlp, SparseMoeBlock)]
    if not found or found[0][1].router_probs is None:
        return None
    num_experts, k = found[0][1].router_probs.shape[1], found[0][1].top_k
    mask = decoder.token_mask
    counts, prob_sums = [], []
    for _, block in found:
        probs, selected = block.router_probs, block.selected_experts
        if mask is None:
            counts.append(torch.bincount(selected.reshape(-1), minlength=num_experts))
            prob_sums.append(probs.sum(dim=0))
        else:
            real = mask.reshape(-1).bool()
            counts.append(torch.bincount(selected[real].reshape(-1), minlength=num_experts))
            prob_sums.append(probs[real].sum(dim=0))
    tokens = found[0][1].router_probs.shape[0] if mask is None else int(mask.sum())
    rows = tokens * len(found)
    share = torch.stack(counts).sum(dim=0).float() / rows  # f_e
    mean_prob = torch.stack(prob_sums).sum(dim=0) / rows  # P_e
    aux = num_experts * (share * mean_prob).sum()
    return RouterStats(aux_loss=aux, aux_loss_coef=model.config.router_aux_loss_coef,
                       tokens_per_expert=torch.stack(counts), layers=[i for i, _ in found])


def count_activated_parameters(model: nn.Module) -> int:
    """Parameters one token runs through: all of them except, in each MoE layer, the experts it is not routed
    to (every token uses the router, the shared expert and k routed experts). Equals the total for dense models."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, SparseMoeBlock):
            experts = module.experts
            per_expert = (experts.gate_up_proj.numel() + experts.down_proj.numel()) // experts.num_experts
            total -= (experts.num_experts - module.top_k) * per_expert
    return total
