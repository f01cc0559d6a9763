"""Key/value cache for incremental decoding, with a length per row.

Buffers are preallocated ([rows, kv_heads, capacity, head_dim] per layer) and grow by doubling, so a decode
step writes one slot instead of concatenating the whole history. Every row (sequence) has its own length:

- A uniform cache (all rows the same length: one prompt, or a left-padded batch) writes new keys after the
  common length, and the model masks and positions it as before.
- A ragged cache (rows of different lengths: the inference engine's continuous batch, where requests join
  and leave between steps) writes each row's new keys after that row's own length; the model then takes
  positions from `positions` and a per-row mask (`AttentionMask.for_rows`), so a row sees exactly its own
  keys and gets what it would get alone. Slots past a row's length hold zeros or stale finite values, always
  masked out.

Rows join by copying another cache's row (`append_rows`: a prefilled prompt, once per sample, so `n` samples
share one prefill) and leave by `remove_row`, which moves the last row into the gap: the live rows stay the
first `batch` rows of the buffers, so a forward reads them as views, never gathers.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", rows: int = 0) -> None:
        """`rows`: buffer rows to allocate beyond `batch`, for rows that join later (`append_rows`)."""
        # zeros, not empty: a masked slot must never hold NaN (0 * NaN would reach a softmax)
        shape = (max(batch, rows, 1), kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * batch  # tokens stored per row (identical for every layer between forwards)
        self._write_at: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, positions) of a ragged T=1 write
        # Per-request long-context state (qwen25.longctx): the whole prompt's length, set before a chunked
        # prefill so choices made from it see the full prompt (None: the first forward's length), and the
        # dynamic-YaRN factor fixed at prefill and kept through decode. `request_length` reads the former.
        # Meaningful for a cache whose rows share one length (the engine keeps such models' batches uniform).
        self.prompt_length: int | None = None
        self.rope_factor: float | None = None

    def request_length(self, end: int) -> int:
        """The request's prompt length as `prompt_length` gives it, or `end` (tokens through this forward) when
        that is longer or unset: a decode step past the prompt counts its own length."""
        return max(self.prompt_length or 0, end)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, capacity: int, rows: int = 0) -> KVCache:
        cfg = model.config
        param = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.kv_head_dim, capacity,
                   param.dtype, param.device, rows)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        """The longest row's length: the length of every row in a uniform cache."""
        return max(self.lengths, default=0)

    @property
    def ragged(self) -> bool:
        """Rows of different lengths: the model positions and masks each row by its own length."""
        return any(n != self.lengths[0] for n in self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def positions(self, num_tokens: int) -> torch.Tensor:
        """[batch, num_tokens] positions of the next tokens of every row: its length onwards."""
        device = self.keys[0].device
        start = torch.tensor(self.lengths, device=device)
        return start[:, None] + torch.arange(num_tokens, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, kv_heads, T, D] after each row's length; return every row's keys/values so far, up to
        the longest row (a ragged cache's shorter rows end in slots the mask hides)."""
        B, T = k.shape[0], k.shape[2]
        if B != self.batch:
            raise ValueError(f"the KV cache holds {self.batch} rows, the forward has {B}")
        end = self.length + T
        if end > self.keys[layer].shape[2]:
            self._grow(layer, end)
        keys, values = self.keys[layer], self.values[layer]
        if not self.ragged:
            start = self.lengths[0] if B else 0
            keys[:B, :, start:end] = k
            values[:B, :, start:end] = v
        elif T == 1:
            rows, pos = self._write_index()
            keys[rows, :, pos] = k[:, :, 0]
            values[rows, :, pos] = v[:, :, 0]
        else:
            for row, start in enumerate(self.lengths):
                keys[row, :, start:start + T] = k[row]
                values[row, :, start:start + T] = v[row]
        return keys[:B, :, :end], values[:B, :, :end]

    def _write_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row ids, each row's length) as tensors, built once per forward and shared by the layers."""
        if self._write_at is None:
            device = self.keys[0].device
            self._write_at = (torch.arange(self.batch, device=device), torch.tensor(self.lengths, device=device))
        return self._write_at

    def _grow(self, layer: int, needed: int) -> None:
        new_cap = max(needed, 2 * self.keys[layer].shape[2])
        for buffers in (self.keys, self.values):
            old = buffers[layer]
            grown = old.new_zeros(old.shape[0], old.shape[1], new_cap, old.shape[3])
            grown[:, :, : self.length] = old[:, :, : self.length]
            buffers[layer] = grown

    def advance(self, num_tokens: int) -> None:
        self.lengths = [n + num_tokens for n in self.lengths]
        self._write_at = None

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drop finished sequences from a batch)."""
        picked = rows.tolist()
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.lengths = [self.lengths[r] for r in picked]
        self._write_at = None

    def append_rows(self, source: KVCache, row: int = 0, copies: int = 1, start: int = 0) -> None:
        """Add `copies` rows holding `source`'s row `row`: its keys/values from slot `start` (after a left
        padding) up to its length. Joining an empty cache also takes the source's per-request state
        (`prompt_length`, `rope_factor`)."""
        if source is self:
            raise ValueError("append_rows copies from another cache")
        n = source.lengths[row] - start
        if self.batch == 0:
            self.prompt_length, self.rope_factor = source.prompt_length, source.rope_factor
        first, last = self.batch, self.batch + copies
        for layer in range(len(self.keys)):
            if n > self.keys[layer].shape[2]:
                self._grow(layer, n)
            for buffers, src in ((self.keys, source.keys), (self.values, source.values)):
                if last > buffers[layer].shape[0]:
                    buffers[layer] = self._more_rows(buffers[layer], last)
                buffers[layer][first:last, :, :n] = src[layer][row, :, start:start + n]
        self.lengths += [n] * copies
        self._write_at = None

    @staticmethod
    def _more_rows(old: torch.Tensor, needed: int) -> torch.Tensor:
        grown = old.new_zeros(max(needed, 2 * old.shape[0]), *old.shape[1:])
        grown[: old.shape[0]] = old
        return grown

    def remove_row(self, row: int) -> int | None:
        """Drop `row`. The last row moves into its place (its keys/values are copied, the buffers keep their
        size); returns the index that row had, or None when `row` was the last."""
        last = self.batch - 1
        if not 0 <= row <= last:
            raise IndexError(f"row {row} is not in a cache of {self.batch} rows")
        moved = None
        if row != last:
            n = self.lengths[last]
            for layer in range(len(self.keys)):
                self.keys[layer][row, :, :n] = self.keys[layer][last, :, :n]
                self.values[layer][row, :, :n] = self.values[layer][last, :, :n]
            self.lengths[row] = n
            moved = last
        self.lengths.pop()
        self._write_at = None
        if not self.lengths:
            self.prompt_length = self.rope_factor = None
        return moved
