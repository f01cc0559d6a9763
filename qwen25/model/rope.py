"""Rotary position embeddings: inverse frequencies for plain RoPE (any base, for ABF) and YaRN.

The arithmetic follows transformers' `modeling_rope_utils` step for step (fp32, the same operation order),
because a one-ulp difference in an angle grows with the position and breaks exact logit parity.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def default_inv_freq(head_dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / head_dim))


def yarn_correction_range(head_dim: int, base: float, original_max_positions: int, beta_fast: float = 32,
                          beta_slow: float = 1, truncate: bool = True) -> tuple[float, float]:
    """Dimensions below `low` keep their frequency (extrapolate); above `high` are divided by the factor."""

    def corr(num_rotations: float) -> float:
        return head_dim * math.log(original_max_positions / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_attention_factor(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(head_dim: int, base: float, scaling: dict[str, Any], factor: float | None = None,
                  device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """YaRN inverse frequencies and the cos/sin multiplier. `factor` overrides the config's (dynamic YaRN)."""
    factor = float(scaling["factor"] if factor is None else factor)
    original = scaling["original_max_position_embeddings"]
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_attention_factor(factor, mscale) / yarn_attention_factor(factor, mscale_all_dim)
        else:
            attention_factor = yarn_attention_factor(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    low, high = yarn_correction_range(head_dim, base, original, beta_fast, beta_slow, scaling.get("truncate", True))
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, head_dim, 2).to(device=device, dtype=torch.float) / head_dim)
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_share = (1 - ramp).to(device=device, dtype=torch.float)
    inv_freq = inv_interpolation * (1 - extrapolation_share) + inv_extrapolation * extrapolation_share
    return inv_freq, float(attention_factor)


class RotaryEmbedding(torch.nn.Module):
    """cos/sin for given positions. Holds no tensors in its state dict; frequencies are cached per device.

    Changing the base (ABF between pretraining stages) or the scaling goes through `configure`. With
    `dynamic=True` a YaRN block is applied per request (`request_factor`) instead of with its fixed factor.
    """

    def __init__(self, head_dim: int, base: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.configure(base, scaling)

    def configure(self, base: float, scaling: dict[str, Any] | None, dynamic: bool = False) -> None:
        if dynamic and (scaling or {}).get("rope_type") != "yarn":
            raise ValueError("dynamic YaRN needs a yarn scaling block (it gives original_max_position_embeddings)")
        self.base = float(base)
        self.scaling = dict(scaling) if scaling else None
        self.dynamic = dynamic
        self._cache: dict[tuple[torch.device, float | None], tuple[torch.Tensor, float]] = {}

    def request_factor(self, length: int) -> float:
        """Dynamic YaRN's factor for a request of `length` tokens: max(1, length / original length)."""
        return max(1.0, length / self.scaling["original_max_position_embeddings"])

    def inv_freq(self, device: torch.device, factor: float | None = None) -> tuple[torch.Tensor, float]:
        """`factor` overrides the configured YaRN factor; an explicit factor <= 1 means plain RoPE, bit for bit."""
        key = (device, factor)
        if key not in self._cache:
            if self.scaling is None or (factor is not None and factor <= 1):
                freqs = default_inv_freq(self.head_dim, self.base), 1.0
            else:
                freqs = yarn_inv_freq(self.head_dim, self.base, self.scaling, factor)
            if len(self._cache) >= 16:  # dynamic factors differ per request; keep the cache small
                self._cache.clear()
            self._cache[key] = (freqs[0].to(device), freqs[1])
        return self._cache[key]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype,
                factor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, T] -> cos, sin [B, T, head_dim] in `dtype` (angles computed in fp32)."""
        inv_freq, attention_factor = self.inv_freq(position_ids.device, factor)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
