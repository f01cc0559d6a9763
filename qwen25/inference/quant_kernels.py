"""Weight-only quantization arithmetic and its CPU kernels: int8 per output channel and int4 in groups.

int8: symmetric, one scale per output row; w = scale * q with q in [-127, 127]. The kernel is
`torch._weight_int8pack_mm`.
grouped int8: asymmetric, a scale and a zero per group of input columns, w = scale * (q - 128) + zero with q in
[0, 255]; finer than one scale per row (the per-row grid is what keeps per-row int8 below 99% top-1
agreement on Qwen2.5-0.5B, docs/benchmarks.md). PyTorch has no grouped int8 kernel, so it runs as two int4
matrices: q = 16h + l gives w = [16 scale (h - 8) + zero] + [scale (l - 8) + 8 scale], each exact in the
scales' dtype, each through the int4 kernel. Twice int4's work, yet as fast as the int8 kernel on a 2-core
EPYC, where both kernels are compute-bound (unpacking), not memory-bound.
int4: asymmetric, a scale and a zero per group of `group_size` input columns of a row; w = scale * (q - 8) + zero
with q in [0, 15] (the zero is the value of code 8: the convention of the kernel,
`torch.ops.aten._weight_int4pack_mm_for_cpu`, whose weights `_convert_weight_to_int4pack_for_cpu` packs into a
layout of its own, and whose scales and zeros are one [groups, rows, 2] tensor).

The packed kernels compute one row of activations at a time: for one row (decoding) they read a quarter or half
of bf16's bytes and win, but their cost grows with every row, while dequantizing the weight once and running a
bf16 matmul costs a fixed conversion plus a GEMM that reuses each weight for many rows. `measure_kernel_rows`
finds up to how many rows the packed kernel is the faster one for a shape; the decode kernel choice
(`qwen25.inference.kernels`) runs it once per machine and shape and keeps the answer with its own choices.

Portable form (what files hold): int8 weights as they are; int4 codes two per byte, the low nibble for even
columns. The packed int4 layout (blocks of rows interleaved by nibble, its width set by the CPU's vector
extension) is made at load and read back by `unpack_int4_t`, whose block width is found by packing a probe.
"""

from __future__ import annotations

import functools
import time

import torch

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernel accepts
INT4_ROW_MULTIPLE = 64  # packed int4 weights are padded to whole row blocks (the kernel needs 16, AVX512 packs 64)
_MEASURE_MAX_ROWS = 512
_MEASURE_MAX_OUT = 8192  # both paths cost in proportion to the output width, so wider layers are measured cut to this


# ---- quantize and dequantize (portable form) -------------------------------------------------------------------

def int8_scales(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One scale per row of a [N, K] weight: its largest magnitude over 127, in `dtype`."""
    return (weight.detach().float().abs().amax(dim=1) / 127).to(dtype)


def int8_codes(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, k] -> int8 codes, rounded against the scales as stored (so dequantizing gives the nearest grid point)."""
    s = scales.float()
    s = torch.where(s > 0, s, torch.ones_like(s))  # an all-zero row: any scale, codes 0
    return (weight.float() / s[:, None]).round_().clamp_(-127, 127).to(torch.int8)


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int8 [N, K], scales [N] in `scale_dtype`)."""
    scales = int8_scales(weight, scale_dtype)
    return int8_codes(weight, scales), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scales.float()[:, None]).to(dtype)


def group_params(groups: torch.Tensor, dtype: torch.dtype, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """groups [N, G, g] -> (scales, zeros) [N, G] in `dtype`: each group's range [min, max] spread over
    2**bits levels, the zero being the value of the middle code (8 for int4, 128 for grouped int8)."""
    w = groups.detach().float()
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((hi - lo) / (2**bits - 1)).to(dtype)
    return scales, (lo + 2 ** (bits - 1) * scales.float()).to(dtype)


def group_codes(groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """groups [N, G, g] -> uint8 codes 0..2**bits - 1, rounded against the scales and zeros as stored."""
    start = zeros.float() - 2 ** (bits - 1) * scales.float()  # the value of code 0
    s = scales.float()
    s = torch.where(s > 0, s, torch.ones_like(s))  # a constant group: scale 0, every code gives its value
    return ((groups.float() - start[..., None]) / s[..., None]).round_().clamp_(0, 2**bits - 1).to(torch.uint8)


def quantize_groups(weight: torch.Tensor, group_size: int, scale_dtype: torch.dtype,
                    bits: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (codes uint8 [N, K] in 0..2**bits - 1, scales [N, K/g], zeros [N, K/g])."""
    n, k = weight.shape
    check_group_size(k, group_size)
    groups = weight.detach().float().reshape(n, k // group_size, group_size)
    scales, zeros = group_params(groups, scale_dtype, bits)
    return group_codes(groups, scales, zeros, bits).reshape(n, k), scales, zeros


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype,
                      bits: int = 4) -> torch.Tensor:
    n, k = codes.shape
    groups = scales.shape[1]
    c = codes.float().reshape(n, groups, k // groups)
    return ((c - 2 ** (bits - 1)) * scales.float()[..., None] + zeros.float()[..., None]).reshape(n, k).to(dtype)


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"group size {group_size} needs in_features divisible by it; a layer has "
                         f"{in_features}")


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] (0..15, K even) -> [N, K/2], two per byte, the low nibble for the even column."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    n, half = packed.shape
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(n, 2 * half)


# ---- the int4 kernel's packed layout -------------------------------------------------------------------------

def padded_rows(n: int) -> int:
    return -(-n // INT4_ROW_MULTIPLE) * INT4_ROW_MULTIPLE


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] -> the kernel's packed weight [N', K/2], N' = N padded to whole row blocks (code 8
    with scale and zero 0 in the padding rows: exact zeros)."""
    n, k = codes.shape
    full = torch.full((padded_rows(n), k), 8, dtype=torch.int32, device=codes.device)
    full[:n] = codes
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(full.cpu(), 8).to(codes.device)


def scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """scales, zeros [N, G] -> the kernel's [G, N', 2] (padding rows zero)."""
    n, groups = scales.shape
    out = torch.zeros(groups, padded_rows(n), 2, dtype=dtype, device=scales.device)
    out[:, :n, 0] = scales.t()
    out[:, :n, 1] = zeros.t()
    return out


def _signed_codes_t(packed: torch.Tensor, block: int) -> torch.Tensor:
    """Packed weight [N', K/2] -> int8 (code - 8) as [K, N']: in the layout, each block of `block` rows holds,
    for every column k, `block/2` bytes whose low nibbles are the block's first half of rows and high nibbles
    the second half. XOR 0x88 turns each nibble q into q - 8 in 4-bit two's complement; arithmetic shifts
    sign-extend it."""
    rows, half = packed.shape
    k = 2 * half
    b = (packed.reshape(rows // block, k, block // 2) ^ 0x88).view(torch.int8).transpose(0, 1)
    return torch.cat([(b << 4) >> 4, b >> 4], dim=-1).reshape(k, rows)


@functools.cache
def int4_block() -> int | None:
    """The row-block width of this CPU's int4 packing (64 with AVX512, 32 with AVX2), found by packing a probe
    and reading it back; None when neither reading matches (then the portable codes are kept beside it)."""
    probe = torch.randint(0, 16, (INT4_ROW_MULTIPLE * 2, 8), generator=torch.Generator().manual_seed(0),
                          dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 8)
    for block in (64, 32):
        if packed.shape == (probe.shape[0], probe.shape[1] // 2) and torch.equal(
                _signed_codes_t(packed, block).t().int() + 8, probe):
            return block
    return None


def unpack_int4_t(packed: torch.Tensor) -> torch.Tensor:
    """The kernel's packed weight [N', K/2] -> int8 (code - 8) [K, N']; needs `int4_block()`."""
    block = int4_block()
    if block is None:
        raise RuntimeError("this CPU's int4 packing could not be read back; keep the portable codes instead")
    return _signed_codes_t(packed, block)


# ---- the two ways to multiply ------------------------------------------------------------------------------------

def int8_kernel(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (scales * q).T through the packed int8 kernel: [M, N]."""
    return torch._weight_int8pack_mm(x, q, scales)


def int4_kernel(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ dequant(packed).T through the packed int4 kernel: [M, N'] (N' counts the padding rows)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)


def int4_dequantized_t(packed: torch.Tensor, sz: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The packed int4 weight as a dense [K, N'] matrix (transposed: the layout unpacks fastest that way, and
    `x @ w_t` is the same GEMM as F.linear)."""
    codes_t = unpack_int4_t(packed)
    k, rows = codes_t.shape
    groups = sz.shape[0]
    w = codes_t.to(dtype).reshape(groups, k // groups, rows)
    return torch.addcmul(sz[:, None, :, 1], w, sz[:, None, :, 0]).reshape(k, rows)


def split_int8_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped int8 codes [N, K] (0..255), scales and zeros [N, G] -> the two int4 matrices that add up to it:
    packed [2, N', K/2] (high nibbles, low nibbles) and their scales and zeros [2, G, N', 2]."""
    c = codes.to(torch.uint8)
    s = scales.to(dtype)
    return (torch.stack([pack_int4(c >> 4), pack_int4(c & 15)]),
            torch.stack([scales_and_zeros(s * 16, zeros, dtype), scales_and_zeros(s, s * 8, dtype)]))


def join_int8_groups(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The portable codes [n, K] (0..255) back from `split_int8_groups`' packed pair; needs `int4_block()`."""
    high = unpack_int4_t(packed[0])[:, :n].t().to(torch.int16) + 8
    low = unpack_int4_t(packed[1])[:, :n].t().to(torch.int16) + 8
    return (high * 16 + low).to(torch.uint8)


def int8_groups_kernel(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ W.T for grouped int8 held as `split_int8_groups`' pair: two int4 kernel calls, [M, N']."""
    return int4_kernel(x, packed[0], group_size, sz[0]) + int4_kernel(x, packed[1], group_size, sz[1])


def int8_groups_dequantized_t(packed: torch.Tensor, sz: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The grouped int8 weight as a dense [K, N'] matrix: both halves in fp32, rounded to `dtype` once."""
    return (int4_dequantized_t(packed[0], sz[0], torch.float32)
            + int4_dequantized_t(packed[1], sz[1], torch.float32)).to(dtype)


# ---- which path for how many rows --------------------------------------------------------------------------------

def _best_seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def measure_kernel_rows(scheme: str, out_features: int, in_features: int, group_size: int | None,
                        dtype: torch.dtype) -> dict:
    """{"rows": R, "seconds": {rows: [kernel, dequantized]}}: R is the largest power-of-two row count up to
    which the packed kernel beats dequantize-then-matmul for this shape (0 if it never does), timed on random
    weights; row counts double until the dequantizing path has won twice in a row."""
    gen = torch.Generator().manual_seed(0)
    n = min(out_features, _MEASURE_MAX_OUT)
    weight = torch.randn(n, in_features, generator=gen) * 0.02
    if scheme == "int8" and group_size is None:
        q, scales = quantize_int8(weight, dtype)
        kernel = functools.partial(int8_kernel, q=q, scales=scales)

        def dense(x):
            return x @ (q.to(dtype) * scales[:, None]).t()
    elif scheme == "int8":
        packed, sz = split_int8_groups(*quantize_groups(weight, group_size, dtype, bits=8), dtype)
        kernel = functools.partial(int8_groups_kernel, packed=packed, group_size=group_size, sz=sz)

        def dense(x):
            return x @ int8_groups_dequantized_t(packed, sz, dtype)
    else:
        codes, scales, zeros = quantize_groups(weight, group_size, dtype)
        packed, sz = pack_int4(codes), scales_and_zeros(scales, zeros, dtype)
        kernel = functools.partial(int4_kernel, packed=packed, group_size=group_size, sz=sz)

        def dense(x):
            return x @ int4_dequantized_t(packed, sz, dtype)
    best, losses, rows, seconds = 0, 0, 1, {}
    while rows <= _MEASURE_MAX_ROWS and losses < 2:
        x = torch.randn(rows, in_features, generator=gen).to(dtype)
        seconds[rows] = [_best_seconds(lambda: kernel(x)), _best_seconds(lambda: dense(x))]
        if seconds[rows][0] <= seconds[rows][1]:
            best, losses = rows, 0
        else:
            losses += 1
        rows *= 2
    return {"rows": best, "seconds": seconds}
