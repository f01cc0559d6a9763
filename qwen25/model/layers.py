"""The building blocks every decoder layer uses: linear layers with CPU inference kernels chosen by a
per-machine plan, fused projections, RMSNorm and the SwiGLU MLP. A leaf module: the dense model (`qwen2.py`)
and the MoE block (`moe.py`) both import it, and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

DECODE_ROWS = 16  # matmuls of at most this many rows (decoding) are planned per rows bucket
# Every larger matmul (prefill, log-likelihood scoring) shares one planned bucket, timed at this many rows; it takes
# the plan's kernel in inference mode only (the engine), never in training or its no-grad evaluation.
PREFILL_BUCKET = 256


def rows_bucket(rows: int) -> int:
    """Row counts as the kernel plan groups them: 1, 2, 3-4, 5-8, 9-16 -> 1, 2, 4, 8, 16; more -> PREFILL_BUCKET."""
    return 1 << (rows - 1).bit_length() if rows <= DECODE_ROWS else PREFILL_BUCKET


@dataclass(frozen=True)
class KernelPlan:
    """Which kernel each CPU inference matmul runs (per rows bucket: decoding's few rows, and one bucket for
    prefill-sized inputs), chosen per machine by measurement (`qwen25.inference.kernels`: the fastest kernel
    differs between CPUs, so nothing here assumes one).

    weight_major: keys (weight dtype, rows bucket, out_features, in_features) that run `weight_major_linear`
      instead of F.linear.
    onednn: keys of the same form that run `onednn_linear` (the weight in oneDNN's blocked layout).
    unfused: keys (weight dtype, rows bucket, output sizes, in_features) of fused projections (q/k/v, gate/up)
      that run as separate matmuls instead of one.
    The empty plan (the default, and what training sees) is F.linear and fused projections everywhere.
    """

    weight_major: frozenset[tuple] = frozenset()
    unfused: frozenset[tuple] = frozenset()
    onednn: frozenset[tuple] = frozenset()


_plan = KernelPlan()


def set_kernel_plan(plan: KernelPlan) -> None:
    """Install the process-wide kernel plan (like `torch.backends` flags: a property of the machine, not of a
    model)."""
    global _plan
    _plan = plan


def kernel_plan() -> KernelPlan:
    return _plan


def weight_major_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear computed weight-major: `torch.mv` for one row, `weight @ x.T` for a few. On some CPUs these
    stream the weight faster than the GEMM path F.linear takes for few rows; on others slower (measured, not
    assumed: `KernelPlan`)."""
    rows = x.numel() // x.shape[-1]
    if rows == 1:
        flat = x.reshape(-1)
        y = torch.mv(weight, flat) if bias is None else torch.addmv(bias, weight, flat)
        return y.view(*x.shape[:-1], -1)
    xt = x.reshape(rows, -1).t()
    y = weight @ xt if bias is None else torch.addmm(bias[:, None], weight, xt)
    return y.t().contiguous().view(*x.shape[:-1], -1)  # row-major like F.linear: kernels downstream expect it


ONEDNN_ROWS_HINT = 8  # the row count oneDNN blocks a reordered weight for (one layout serves every bucket)
_onednn_weights = WeakIdKeyDictionary()  # weight -> ((address, version), the weight in oneDNN's layout)


def onednn_available() -> bool:
    """True where PyTorch's oneDNN linear ops exist (x86 and ARM CPU builds)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _stamp(weight: torch.Tensor) -> tuple[int, int]:
    try:
        return weight.data_ptr(), weight._version
    except RuntimeError:  # an inference tensor has no version counter; it cannot be updated in place either
        return weight.data_ptr(), -1


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through oneDNN with the weight reordered once into oneDNN's blocked layout (what inductor's CPU
    weight prepacking does). On some CPUs this streams a weight for a few rows much faster than F.linear's
    GEMM path, and runs prefill-sized matmuls faster too, F.linear's bf16 path reordering the weight on every
    call (measured, not assumed: `KernelPlan`). The reordered copy is kept beside the weight (memory: one
    more copy of the weights that take this kernel) and redone when the weight changes (a new tensor, or an
    in-place update such as an optimizer step between GRPO rollouts). No autograd: callers use it in
    inference only."""
    stamp = _stamp(weight)
    entry = _onednn_weights.get(weight)
    if entry is None or entry[0] != stamp:
        with torch.no_grad():
            entry = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ONEDNN_ROWS_HINT))
        _onednn_weights[weight] = entry
    return torch.ops.mkldnn._linear_pointwise(x, entry[1], bias, "none", [], "")


def _plan_bucket(x: torch.Tensor) -> int | None:
    """The plan's rows bucket for a CPU input: decode-sized, or larger in inference mode; else None."""
    if x.device.type != "cpu" or not x.shape[-1]:
        return None
    rows = x.numel() // x.shape[-1]
    if rows > DECODE_ROWS and not torch.is_inference_mode_enabled():
        return None
    return rows_bucket(rows) if rows > 0 else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, or the kernel the plan measured faster for this shape and rows bucket (weight-major; oneDNN's
    layout when no gradient is wanted)."""
    if _plan.weight_major or _plan.onednn:
        bucket = _plan_bucket(x)
        if bucket is not None:
            key = (weight.dtype, bucket, *weight.shape)
            if key in _plan.onednn and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)) \
                    and not torch.compiler.is_compiling():
                return onednn_linear(x, weight, bias)
            if key in _plan.weight_major:
                return weight_major_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose CPU inference shapes take the kernels the plan chose (`linear`)."""

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

    def ensure_packed(self) -> None:
        """Pack the weights into one matrix unless they already are (the inference path; the kernel measurement
        times the packed matrix before the first decode)."""
        if not self._is_packed():
            self._pack()

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
        self.ensure_packed()
        if _plan.unfused and self.plan_key(x) in _plan.unfused:
            return tuple(linear(x, lin.weight, lin.bias) for lin in self.linears)
        return linear(x, self.weight, self.bias).split(self.sizes, dim=-1)

    def plan_key(self, x: torch.Tensor) -> tuple | None:
        """This projection's key in `KernelPlan.unfused` for input x (None: not a planned shape)."""
        bucket = _plan_bucket(x)
        w = self.linears[0].weight
        return None if bucket is None else (w.dtype, bucket, tuple(self.sizes), w.shape[1])


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
