"""The order GRPO trains on its queries: by the variance of their reward scores, highest first (report §4.3).

A query whose k samples all get the same reward teaches nothing (its group advantages are all zero); one whose
samples disagree teaches the most. Each pass over the queries starts from a shuffle (by seed and pass); the next
`lookahead` queries not yet trained on in this pass (0: all of them) are scored (k samples each, the variance of
their rewards) and sorted, highest variance first (ties keep the shuffled order); the scores are refreshed, and
that part of the pass re-sorted, every `refresh_every` steps and at the start of every pass. Scoring costs k
samples per query looked at, so a lookahead of a few times the queries used between refreshes keeps the cost near
that of the rollouts themselves. Without a scorer the order is the shuffle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Scorer = Callable[[list[str]], dict[str, float]]  # query ids -> reward variance of each


class VarianceOrder:
    def __init__(self, ids: Sequence[str], scorer: Scorer | None, refresh_every: int, seed: int,
                 lookahead: int = 0) -> None:
        if not ids:
            raise ValueError("no queries to order")
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be unique")
        if refresh_every < 1 or lookahead < 0:
            raise ValueError(f"refresh_every must be >= 1 and lookahead >= 0, got {refresh_every}, {lookahead}")
        self.ids, self.scorer, self.refresh_every, self.seed = list(ids), scorer, refresh_every, seed
        self.lookahead = lookahead
        self.scores: dict[str, float] = {}
        self.order: list[str] = []
        self.position = 0
        self.passes = 0
        self.refreshed_at: int | None = None
        self.refreshes = 0

    def _new_pass(self) -> None:
        perm = np.random.default_rng([self.seed, self.passes]).permutation(len(self.ids))
        self.order = [self.ids[i] for i in perm]
        self.position = 0
        self.passes += 1
        self.refreshed_at = None  # a new pass is always scored

    def _refresh(self, step: int) -> None:
        end = self.position + self.lookahead if self.lookahead else len(self.order)
        window = self.order[self.position:end]
        self.scores.update(self.scorer(window))
        rank = {q: i for i, q in enumerate(window)}
        self.order[self.position:end] = sorted(window, key=lambda q: (-self.scores[q], rank[q]))
        self.refreshed_at = step
        self.refreshes += 1

    def take(self, n: int, step: int) -> list[str]:
        """The next `n` query ids for optimizer step `step` (a pass that runs out starts the next one)."""
        out = []
        while len(out) < n:
            if self.position >= len(self.order):
                self._new_pass()
            if self.scorer is not None and (self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every):
                self._refresh(step)
            take = self.order[self.position:self.position + n - len(out)]
            out += take
            self.position += len(take)
        return out

    def state_dict(self) -> dict:
        return {"scores": dict(self.scores), "order": list(self.order), "position": self.position,
                "passes": self.passes, "refreshed_at": self.refreshed_at, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        self.scores, self.order, self.position = dict(state["scores"]), list(state["order"]), state["position"]
        self.passes, self.refreshed_at, self.refreshes = state["passes"], state["refreshed_at"], state["refreshes"]
