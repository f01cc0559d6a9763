"""The building blocks every decoder layer uses: linear layers with CPU decode kernels, fused projections,
RMSNorm and the SwiGLU MLP. A leaf module: the dense model (`qwen2.py`) and the MoE block (`moe.py`) both
import it, and it imports neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SKINNY_ROWS = 16  # up to this many rows, CPU matmuls stream the weight faster as W @ x.T than as x @ W.T


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with the few-row shapes of CPU decoding sent to the kernels that stream weights fastest.

    Decoding reads every weight once per step for one row (batch 1) or a few (batched decode), so its speed
    is the weight read rate. On CPU, one row runs as `torch.mv` (about 1.7x the read rate of the GEMM path
    `F.linear` takes), and 2-16 rows as `weight @ x.T` (oneDNN picks a kernel for a tall output that reads
    the weight about 1.25x faster than for `x @ weight.T`); see docs/benchmarks.md.
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 0 < rows <= SKINNY_ROWS:
        return F.linear(x, weight, bias)
    if rows == 1:
        flat = x.reshape(-1)
        y = torch.mv(weight, flat) if bias is None else torch.addmv(bias, weight, flat)
        return y.view(*x.shape[:-1], -1)
    xt = x.reshape(rows, -1).t()
    y = weight @ xt if bias is None else torch.addmm(bias[:, None], weight, xt)
    return y.t().contiguous().view(*x.shape[:-1], -1)  # row-major like F.linear: kernels downstream expect it


class Linear(nn.Linear):
    """nn.Linear whose CPU decode shapes take the faster kernels of `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedProjection:
    """Several Linear layers that read the same input (q/k/v; gate/up), run as one matmul.

    At inference the layers' weights are re-pointed (`param.data = ...`) to row blocks of one contiguous matrix, so the
    weights exist once and the Parameters, their names and the state dict stay exactly as they were. Anything
    that replaces a weight tensor (loading with `assign=True`, `.to(dtype)`) is seen by address on the next
    call and the matrix is rebuilt. Training keeps the separate layers: autograd reaches the Parameters, not
    the matrix they are views of.
    """

    def __init__(self, *linears: nn.Linear) -> None:
        self.linears = linears
        self.sizes = [lin.out_features for lin in linears]
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._packed_at: list[tuple[int, int | None]] = []  # the layers' (weight, bias) addresses when packed

    def _concat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layers' weights stacked row-wise, and their biases if every layer has one."""
        weight = torch.cat([lin.weight for lin in self.linears])
        has_bias = all(lin.bias is not None for lin in self.linears)
        return weight, torch.cat([lin.bias for lin in self.linears]) if has_bias else None

    def _addresses(self) -> list[tuple[int, int | None]]:
        return [(lin.weight.data_ptr(), None if lin.bias is None else lin.bias.data_ptr()) for lin in self.linears]

    def _is_packed(self) -> bool:
        # The packed matrix keeps the old storage alive, so a replaced weight always has a new address.
        return self.weight is not None and self._addresses() == self._packed_at

    def _pack(self) -> None:
        # Made outside inference mode, so the Parameters never become inference tensors: a model that decodes
        # (GRPO rollouts) can be trained afterwards.
        with torch.inference_mode(False), torch.no_grad():
            self._pack_weights()

    def _pack_weights(self) -> None:
        self.weight, self.bias = self._concat()
        row = 0
        for lin in self.linears:
            lin.weight.data = self.weight[row:row + lin.out_features]
            if self.bias is not None:
                lin.bias.data = self.bias[row:row + lin.out_features]
            row += lin.out_features
        self._packed_at = self._addresses()

    def usable(self) -> bool:
        """True in inference mode (the engine's decoding) when the weights are plain local tensors (not sharded
        DTensors) and nothing is being compiled. Training, its no-grad evaluation, FSDP and torch.compile keep the
        separate layers and their storage."""
        w = self.linears[0].weight
        return (torch.is_inference_mode_enabled() and type(w.data) is torch.Tensor
                and not torch.compiler.is_compiling())

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.usable():
            # Autograd (training, FSDP, compile): concatenate the weights, a small copy next to the activations,
            # so the input is cast once under autocast and one larger matmul replaces several.
            return F.linear(x, *self._concat()).split(self.sizes, dim=-1)
        if not self._is_packed():
            self._pack()
        return linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) in fp32, as transformers computes it, in one fused kernel
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

        self._gate_up = FusedProjection(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self._gate_up(x)
        return self.down_proj(F.silu(gate) * up)
