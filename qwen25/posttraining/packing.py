"""Packing encoded conversations into fixed-length rows, and the SFT step source the trainer draws from.

Several conversations share a row; each is its own segment (attention stays inside it) and its positions
restart at 0, so a packed row trains exactly as its conversations would one by one. Rows are filled greedily
in a shuffled order that depends only on (seed, epoch), so the whole data position is (epoch, step), and a
resumed run packs the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qwen25.data.loader import Batch
from qwen25.posttraining.conversations import Example
from qwen25.training.distributed import DistInfo


def plan_rows(lengths: Sequence[int], seq_len: int, order: Sequence[int]) -> list[list[int]]:
    """Example indices per row: greedy in `order`, a new row when the next example does not fit."""
    rows: list[list[int]] = []
    used = seq_len
    for i in order:
        if lengths[i] > seq_len:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than a row of {seq_len}")
        if used + lengths[i] > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(int(i))
        used += lengths[i]
    return rows


def pack(examples: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int,
         domains: Sequence[str] | None = None) -> Batch:
    """A Batch of len(rows) rows of `seq_len`: ids, labels (-100 where not trained), restarting positions and one
    segment per conversation (padding is a segment of its own and never trained)."""
    n = len(rows)
    ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    labels = np.full((n, seq_len), -100, dtype=np.int64)
    positions = np.zeros((n, seq_len), dtype=np.int64)
    segments = np.zeros((n, seq_len), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            ex = examples[i]
            k = len(ex)
            ids[r, at:at + k] = ex.ids
            nxt = np.empty(k, dtype=np.int64)
            nxt[:-1] = ex.ids[1:]
            nxt[-1] = -100
            labels[r, at:at + k] = np.where(ex.target, nxt, -100)
            positions[r, at:at + k] = np.arange(k)
            segments[r, at:at + k] = s + 1
            at += k
        positions[r, at:] = np.arange(seq_len - at)
        segments[r, at:] = len(row) + 1
    return Batch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(positions),
                 torch.from_numpy(segments), list(domains) if domains is not None else ["sft"] * n)


class PackedConversations:
    """The trainer's step source for SFT: `epochs` passes over the examples, each shuffled by (seed, epoch) and
    packed into rows; each step takes `rows_per_step` rows (over all ranks), this rank's share cut into
    micro-batches. The last step of an epoch may be smaller."""

    def __init__(self, examples: Sequence[Example], seq_len: int, rows_per_step: int, epochs: int, seed: int,
                 pad_id: int, info: DistInfo, micro_batch: int) -> None:
        if not examples:
            raise ValueError("no SFT examples to train on")
        self.examples, self.seq_len, self.rows_per_step = examples, seq_len, rows_per_step
        self.epochs, self.seed, self.pad_id, self.info, self.micro = epochs, seed, pad_id, info, micro_batch
        self.lengths = [len(e) for e in examples]
        self._plans = [self._plan(e) for e in range(epochs)]
        self.epoch, self.step_in_epoch = 0, 0

    def _plan(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        return plan_rows(self.lengths, self.seq_len, order)

    def steps_per_epoch(self, epoch: int) -> int:
        return -(-len(self._plans[epoch]) // self.rows_per_step)

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_epoch(e) for e in range(self.epochs))

    def next_step(self) -> list[Batch]:
        if self.step_in_epoch >= self.steps_per_epoch(self.epoch):
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        if self.epoch >= self.epochs:
            raise StopIteration("all epochs of the SFT data are done")
        plan = self._plans[self.epoch]
        start = self.step_in_epoch * self.rows_per_step
        rows = plan[start:start + self.rows_per_step]
        self.step_in_epoch += 1
        mine = rows[self.info.rank::self.info.world] or [[]]  # an empty row trains nothing but keeps ranks in step
        batch = pack(self.examples, mine, self.seq_len, self.pad_id)
        return [batch.rows(i, i + self.micro) for i in range(0, len(mine), self.micro)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]


def heldout_batches(examples: Sequence[Example], seq_len: int, rows_per_batch: int, pad_id: int,
                    info: DistInfo) -> list[Batch]:
    """Held-out conversations packed in file order, this rank's rows."""
    plan = plan_rows([len(e) for e in examples], seq_len, range(len(examples)))
    mine = plan[info.rank::info.world]
    return [pack(examples, mine[i:i + rows_per_batch], seq_len, pad_id) for i in range(0, len(mine), rows_per_batch)]
