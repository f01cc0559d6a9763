"""Fixed-length training sequences from packed shards: deterministic from a seed, resumable from a saved
position, with domain mixture weights applied at sampling time.

Each domain's shards form one token stream cut into windows of seq_len + 1 tokens; every epoch visits the
windows in a fresh permutation drawn from (seed, domain, epoch). Each step draws the domain of every row from
(seed, stage, step), so the whole state is the step number and one cursor per domain.

Two optional structures inside a row, both expressed as segment ids (attention stays within a segment) and
position ids that restart at each segment:
- document masking: a segment per document (boundaries after `<|endoftext|>`), for SFT-style packing;
- length mixture: a row is "long" with probability `long_fraction`; otherwise it is cut into segments of a
  shorter power-of-two length, so the model also trains on shorter contexts (the report's 40% / 60%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qwen25.data.shards import ShardSet


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L]: the next token of each position
    position_ids: torch.Tensor | None  # [B, L], None when every row is one plain sequence
    segment_ids: torch.Tensor | None
    domains: list[str]

    def rows(self, start: int, stop: int) -> Batch:
        pick = slice(start, stop)
        return Batch(self.input_ids[pick], self.labels[pick],
                     None if self.position_ids is None else self.position_ids[pick],
                     None if self.segment_ids is None else self.segment_ids[pick], self.domains[pick])


class _Stream:
    """One domain's shards as a single token sequence."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        out, pos = [], start
        while length > 0:
            i = int(np.searchsorted(self.starts, pos, side="right") - 1)
            offset = pos - int(self.starts[i])
            piece = self.arrays[i][offset:offset + length]
            out.append(piece)
            pos += len(piece)
            length -= len(piece)
        return np.concatenate(out) if len(out) > 1 else np.asarray(out[0])


class PackedLoader:
    def __init__(self, shards: ShardSet, seq_len: int, rows_per_step: int, mixture: dict[str, float],
                 seed: int, stage: int = 0, long_fraction: float = 1.0, min_short_len: int = 32,
                 document_masking: bool = False) -> None:
        unknown = [d for d in mixture if d not in shards.domains]
        if unknown:
            raise ValueError(f"mixture names domain {unknown[0]!r}, but the shards in {shards.directory} hold "
                             f"{sorted(shards.domains)}")
        self.names = [d for d, w in mixture.items() if w > 0]
        if not self.names:
            raise ValueError("mixture gives every domain weight 0")
        weights = np.array([mixture[d] for d in self.names], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.seq_len, self.rows, self.seed, self.stage = seq_len, rows_per_step, seed, stage
        self.long_fraction, self.min_short_len = long_fraction, min_short_len
        self.document_masking = document_masking
        self.eot = shards.eot_id
        self.streams = {d: _Stream(shards.domains[d]) for d in self.names}
        self.windows = {}
        for d in self.names:
            self.windows[d] = (len(self.streams[d]) - 1) // seq_len
            if self.windows[d] < 1:
                raise ValueError(f"domain {d!r} has {len(self.streams[d])} tokens, fewer than one sequence of "
                                 f"{seq_len + 1}")
        self.step = 0
        self.cursors = {d: 0 for d in self.names}
        self._perm: dict[str, tuple[int, np.ndarray]] = {}

    def state_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "cursors": dict(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        if state["stage"] != self.stage:
            raise ValueError(f"loader state is for stage {state['stage']}, this loader is stage {self.stage}")
        self.step = state["step"]
        self.cursors = {d: state["cursors"].get(d, 0) for d in self.names}

    def _window(self, domain: str) -> np.ndarray:
        cursor = self.cursors[domain]
        self.cursors[domain] += 1
        n = self.windows[domain]
        epoch, index = divmod(cursor, n)
        cached = self._perm.get(domain)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.names.index(domain), epoch])
            cached = (epoch, rng.permutation(n))
            self._perm[domain] = cached
        start = int(cached[1][index]) * self.seq_len
        return self.streams[domain].read(start, self.seq_len + 1)

    def next_batch(self) -> Batch:
        """All rows of the next optimizer step (ranks and micro-batches take slices of it)."""
        rng = np.random.default_rng([self.seed, 1_000_003 + self.stage, self.step])
        domains = [self.names[i] for i in rng.choice(len(self.names), size=self.rows, p=self.weights)]
        short = rng.random(self.rows) >= self.long_fraction
        lengths = [int(rng.choice(self._short_lengths())) if s else 0 for s in short]
        tokens = np.stack([self._window(d) for d in domains]).astype(np.int64)
        self.step += 1
        inputs, labels = torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(tokens[:, 1:].copy())
        if not self.document_masking and not any(lengths):
            return Batch(inputs, labels, None, None, domains)
        L = self.seq_len
        starts = np.zeros((self.rows, L), dtype=bool)
        starts[:, 0] = True
        if self.document_masking:
            starts[:, 1:] |= tokens[:, : L - 1] == self.eot
        t = np.arange(L)
        for row, length in enumerate(lengths):
            if length:
                starts[row] |= t % length == 0
        segment = np.cumsum(starts, axis=1)
        first = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
        return Batch(inputs, labels, torch.from_numpy(t - first), torch.from_numpy(segment), domains)

    def _short_lengths(self) -> list[int]:
        lengths, n = [], self.seq_len // 2
        while n >= self.min_short_len:
            lengths.append(n)
            n //= 2
        return lengths or [self.seq_len]
