"""The Qwen2-MoE feed-forward block: fine-grained routed experts plus a gated shared expert (SPEC §2).

The math is transformers' `modeling_qwen2_moe.py`. The router takes a softmax in fp32 over *all* experts and
then the top k (Mixtral does top-k first and softmax over the k), so the k weights sum to less than one
unless `norm_topk_prob` renormalises them. Every expert is a SwiGLU MLP. A shared expert sees every token and
is scaled per token by sigmoid(x @ w_sg).

Dispatch is dropless: the (token, slot) pairs are sorted by expert, each expert runs once on its contiguous
group (one grouped matmul where PyTorch has a kernel for it, else a loop over experts, never over tokens),
and the weighted outputs are added back to their tokens.

In memory the experts of a layer are stacked input-major, `experts.gate_up` [E, H, 2I] and `experts.down`
[E, I, H]: the grouped matmul reads them as they are and writes their gradients in the same layout (with
transformers' [E, 2I, H] every step would pay for transposed copies of the gradients). `checkpoint.py`
reads and writes the per-expert HF keys (`mlp.experts.{e}.gate_proj.weight` [I, H], ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qwen25.model.config import ModelConfig
from qwen25.model.layers import MLP, Linear

Routing = tuple[torch.Tensor, torch.Tensor]  # one MoE layer's (router probs [N, E] fp32, selected experts [N, k])


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


def grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x [S, in] with rows grouped by expert (counts[e] rows of expert e, in expert order); weight [E, in, out].
    Returns [S, out]: each group times its own expert's matrix."""
    if grouped_mm_usable(x, weight):
        return F.grouped_mm(x, weight, offs=counts.cumsum(0, dtype=torch.int32))
    # unbind, not weight[e]: its backward stacks the E gradients once instead of scattering each into zeros.
    groups = zip(x.split(counts.tolist()), weight.unbind(0))
    return torch.cat([rows @ w for rows, w in groups if len(rows)])


class Experts(nn.Module):
    """E SwiGLU experts, stacked input-major: gate_up [E, H, 2I] (gate columns, then up), down [E, I, H]."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up = nn.Parameter(torch.empty(num_experts, hidden, 2 * intermediate))
        self.down = nn.Parameter(torch.empty(num_experts, intermediate, hidden))

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; expert_ids and weights [N, k]. Returns sum_k weights[:, k] * expert_{ids[:, k]}(x), [N, H]."""
        out_dtype, k = x.dtype, expert_ids.shape[1]
        flat = expert_ids.reshape(-1)
        order = flat.argsort(stable=True)  # (token, slot) pairs, grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts)
        token = order // k
        gate_up, down = self.gate_up, self.down
        if torch.is_autocast_enabled(x.device.type):
            # grouped_mm is not autocast-aware: give the experts the dtype autocast gives a linear layer, and cast
            # the N tokens before copying them out to N*k rows. Casting every expert's weights pays off from a
            # few dozen rows per expert (AMX/tensor-core bf16); training steps have far more.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, gate_up, down = x.to(dtype), gate_up.to(dtype), down.to(dtype)
        gate, up = grouped_mm(x.index_select(0, token), gate_up, counts).chunk(2, dim=-1)
        # The routing weight scales the input of the (linear) down projection: I columns instead of H.
        h = F.silu(gate) * up * weights.reshape(-1)[order].unsqueeze(-1).to(gate.dtype)
        out = grouped_mm(h, down, counts)  # [N*k, H]
        # Summed in the caller's dtype (fp32 under autocast), like transformers' fp32 accumulation.
        return torch.zeros(x.shape, dtype=out_dtype, device=x.device).index_add_(0, token, out.to(out_dtype))


class SparseMoeBlock(nn.Module):
    """Router + routed experts + gated shared expert; replaces the dense MLP in MoE layers.

    `forward` returns the output and this layer's routing, (router probs [N, E] fp32, selected experts [N, k]):
    the tensors the forward itself used, from which `router_stats` gives the aux loss and per-expert load.
    Nothing is kept on the module, so two forwards in one step have two independent routings.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        routed = self.experts(x, experts, weights.to(logits.dtype))
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return (routed + shared).view(shape), (probs, experts)


@dataclass
class RouterStats:
    """Routing of one forward over every MoE layer, padding excluded.

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


def router_stats(routings: list[tuple[int, Routing]], token_mask: torch.Tensor | None,
                 aux_loss_coef: float) -> RouterStats | None:
    """Statistics of one forward from its MoE layers' (layer index, routing); None when there are none.

    The aux loss is transformers' `load_balancing_loss_func`, pooled over all MoE layers: with f_e the share of
    (token, slot) assignments that went to expert e (the f_e sum to k) and P_e the mean router probability of
    e, both averaged over layers and real tokens, aux = E * sum_e f_e * P_e. Padding (0 in the attention mask
    of that forward) counts in neither.
    """
    if not routings:
        return None
    num_tokens, num_experts = routings[0][1][0].shape
    real = None if token_mask is None else token_mask.reshape(-1).bool()
    counts, prob_sums = [], []
    for _, (probs, selected) in routings:
        if real is not None:
            probs, selected = probs[real], selected[real]
        counts.append(torch.bincount(selected.reshape(-1), minlength=num_experts))
        prob_sums.append(probs.sum(dim=0))
    rows = (num_tokens if real is None else int(real.sum())) * len(routings)
    tokens_per_expert = torch.stack(counts)
    share = tokens_per_expert.sum(dim=0).float() / rows  # f_e
    mean_prob = torch.stack(prob_sums).sum(dim=0) / rows  # P_e
    aux = num_experts * (share * mean_prob).sum()
    return RouterStats(aux_loss=aux, aux_loss_coef=aux_loss_coef, tokens_per_expert=tokens_per_expert,
                       layers=[i for i, _ in routings])


def count_activated_parameters(model: nn.Module) -> int:
    """Parameters one token runs through: all of them except, in each MoE layer, the experts it is not routed
    to (every token uses the router, the shared expert and k routed experts). Equals the total for dense models."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, SparseMoeBlock):
            experts = module.experts
            per_expert = (experts.gate_up.numel() + experts.down.numel()) // experts.num_experts
            total -= (experts.num_experts - module.top_k) * per_expert
    return total
