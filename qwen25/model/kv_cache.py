"""Key/value cache for incremental decoding.

Buffers are preallocated to a capacity ([batch, kv_heads, capacity, head_dim] per layer) and grow by
doubling, so a decode step writes one slot instead of concatenating the whole history.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        shape = (batch, kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0  # tokens already stored (identical for every layer between forwards)
        # Per-request long-context state (qwen25.longctx): the whole prompt's length, set before a chunked
        # prefill so choices made from it see the full prompt (None: the first forward's length), and the
        # dynamic-YaRN factor fixed at prefill and kept through decode. `request_length` reads the former.
        self.prompt_length: int | None = None
        self.rope_factor: float | None = None

    def request_length(self, end: int) -> int:
        """The request's prompt length as `prompt_length` gives it, or `end` (tokens through this forward) when
        that is longer or unset: a decode step past the prompt counts its own length."""
        return max(self.prompt_length or 0, end)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, capacity: int) -> KVCache:
        cfg = model.config
        param = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.kv_head_dim, capacity,
                   param.dtype, param.device)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, kv_heads, T, D] after the first `length` slots; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            self._grow(layer, end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _grow(self, layer: int, needed: int) -> None:
        new_cap = max(needed, 2 * self.keys[layer].shape[2])
        for buffers in (self.keys, self.values):
            old = buffers[layer]
            grown = old.new_empty(old.shape[0], old.shape[1], new_cap, old.shape[3])
            grown[:, :, : self.length] = old[:, :, : self.length]
            buffers[layer] = grown

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drop finished sequences from a batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
