"""GPTQ (Frantar et al., 2022): quantize a layer's weight column by column, each column's rounding error
spread over the columns not yet quantized in proportion to how the layer's inputs correlate, so the layer's
output on real inputs moves far less than rounding every weight to its nearest grid point.

The inputs' second moments H = sum x x^T come from one forward of the unquantized model over calibration
text (`calibration_windows`: Python's standard library source and reference documentation, never the
windows `quant_quality.heldout_windows` measures on). The grid is the one `quant_kernels` defines (int8 per
row, int4 per group with zeros), so GPTQ only chooses other codes on it: the kernels and the directory
format are unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from qwen25.data.sources import python_docs, python_stdlib
from qwen25.inference.quant_kernels import check_group_size, group_codes, group_params, int8_codes, int8_scales
from qwen25.tokenizer import QwenTokenizer

DAMPING = 0.01  # added to H's diagonal, as a fraction of its mean: keeps H invertible with few calibration tokens
BLOCK = 128  # columns updated together, or one int4 group when groups are wider
CALIBRATION_DOCS = 40  # the documentation topics held-out windows skip (`quant_quality.SKIP_DOCUMENTS`)
# 16 x 512 = 8,192 tokens: more than the widest layer's inputs (the MLP's 4,864 on the 0.5B model), so H has full
# rank; with 4 windows GPTQ int8 agreed with bf16 on fewer held-out positions than plain rounding (docs/benchmarks.md)
CALIBRATION_WINDOWS = 16


def calibration_windows(tokenizer: QwenTokenizer, windows: int = CALIBRATION_WINDOWS, length: int = 512
                        ) -> torch.Tensor:
    """[windows, length] token ids: half from the standard library's last source files, half from the first
    documentation topics; both disjoint from `quant_quality.heldout_windows`."""
    rows: list[list[int]] = []
    sources = ((lambda: reversed(list(python_stdlib())), (windows + 1) // 2),
               (lambda: itertools.islice(python_docs(), CALIBRATION_DOCS), windows // 2))
    for reader, count in sources:
        ids: list[int] = []
        for doc in reader():
            ids += tokenizer.encode_ordinary(doc)
            if len(ids) >= count * length:
                break
        if len(ids) < count * length:
            raise ValueError(f"calibration text has only {len(ids)} tokens; {count} windows of {length} need "
                             f"{count * length}")
        rows += [ids[i * length:(i + 1) * length] for i in range(count)]
    return torch.tensor(rows)


def _linear_inputs(model: nn.Module) -> Iterator[tuple[nn.Module, list[nn.Linear]]]:
    """(module whose first input feeds them, the linears reading that input): q/k/v read the attention's input,
    gate/up the MLP's, o_proj and down_proj and the LM head their own."""
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        yield attn, [attn.q_proj, attn.k_proj, attn.v_proj]
        yield attn.o_proj, [attn.o_proj]
        yield mlp, [mlp.gate_proj, mlp.up_proj]
        yield mlp.down_proj, [mlp.down_proj]
    yield model.lm_head, [model.lm_head]


@torch.inference_mode()
def input_hessians(model: nn.Module, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """{linear's module name: H [K, K] fp32} over every position of `windows`, one window per forward;
    linears reading the same input share one H."""
    if int(windows.max()) >= model.config.vocab_size:
        raise ValueError(f"calibration token id {int(windows.max())} is outside the model's vocabulary "
                         f"({model.config.vocab_size}); the tokenizer does not match the model")
    names = {id(module): name for name, module in model.named_modules()}
    sums: dict[int, torch.Tensor] = {}
    readers: dict[int, list[nn.Linear]] = {}
    hooks = []

    def accumulate(module, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        key = id(module)
        sums[key] = sums[key].addmm_(x.t(), x) if key in sums else x.t() @ x

    for module, linears in _linear_inputs(model):
        readers[id(module)] = linears
        hooks.append(module.register_forward_pre_hook(accumulate))
    try:
        for row in windows:
            model(row[None])
    finally:
        for hook in hooks:
            hook.remove()
    return {names[id(lin)]: sums[key] for key, linears in readers.items() if key in sums for lin in linears}


def _inverse_cholesky(hessian: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of H^-1 (damped), in float64: row i holds how column i's error moves the rest."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0  # inputs that were always zero: any code will do
    h[dead, dead] = 1
    h.diagonal().add_(DAMPING * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, scheme: str, group_size: int | None,
                  scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """weight [N, K] -> the portable tensors of `quant_kernels` (per-row int8: qweight, scales; grouped, i.e.
    int4 or int8 with a `group_size`: unpacked codes, scales, zeros), chosen by GPTQ against `hessian` [K, K].
    Per-row int8 scales are each row's largest magnitude as in plain rounding; groups take their range from
    the weights as updated when GPTQ reaches them."""
    w = weight.detach().float().clone()
    n, k = w.shape
    w[:, hessian.diagonal() == 0] = 0
    u = _inverse_cholesky(hessian).float()
    per_row = scheme == "int8" and group_size is None
    bits = 8 if scheme == "int8" else 4
    if per_row:
        scales = int8_scales(w, scale_dtype)
        codes = torch.empty(n, k, dtype=torch.int8)
    else:
        check_group_size(k, group_size)
        groups = k // group_size
        scales, zeros = torch.empty(n, groups, dtype=scale_dtype), torch.empty(n, groups, dtype=scale_dtype)
        codes = torch.empty(n, k, dtype=torch.uint8)
    width = max(BLOCK, group_size or 0)
    for start in range(0, k, width):
        end = min(start + width, k)
        block, errors = w[:, start:end].clone(), torch.empty(n, end - start)
        for i in range(end - start):
            col = start + i
            if per_row:
                q = int8_codes(block[:, i:i + 1], scales)
                codes[:, col:col + 1] = q
                dq = q.float()[:, 0] * scales.float()
            else:
                g = col // group_size
                if col % group_size == 0:
                    s, z = group_params(block[:, None, i:i + group_size], scale_dtype, bits)
                    scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
                s, z = scales[:, g:g + 1], zeros[:, g:g + 1]
                q = group_codes(block[:, None, i:i + 1], s, z, bits)[:, 0, 0]
                codes[:, col] = q
                dq = (q.float() - 2 ** (bits - 1)) * s[:, 0].float() + z[:, 0].float()
            err = (block[:, i] - dq) / u[col, col]
            block[:, i:] -= err[:, None] * u[col, col:end][None]
            errors[:, i] = err
        w[:, end:] -= errors @ u[start:end, end:]
    if per_row:
        return {"qweight": codes, "scales": scales}
    return {"codes": codes, "scales": scales, "zeros": zeros}
