"""`qwen25 scaling fit`: from a sweep's records to the fitted laws: per (N, D) group the optimal LR and batch
(a quadratic's minimum, `laws.quadratic_optimum`), the power laws mu_opt(N, D) and B_opt(N, D), the loss law
L(N, D) with MoE's effective size, all with bootstrap intervals; saved as `fit.json` for `predict`.

A group is every run whose settings agree except for LR and batch (same shape, data, schedule and token
budget D). N is the non-embedding parameter count by default (`measure="total"` counts the embeddings too); for
MoE, N is the activated count and N_total the count of all experts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qwen25.io import atomic_write_text
from qwen25.scaling.laws import LossLaw, PowerLaw, fit_loss_law, fit_power_law, quadratic_optimum

MEASURES = ("non_embedding", "total")


@dataclass
class Group:
    """One (shape, D) of the grid and its optimum."""

    model: str
    kind: str  # "dense" or "moe"
    n: float  # activated parameters in the chosen measure (all of them for dense)
    n_total: float
    d: float  # the token budget
    runs: int
    diverged: int
    lr: float | None  # the quadratic's optimum; None when status is not "ok" or LR was not varied
    batch_tokens: float | None
    loss: float | None  # the quadratic's value at the optimum
    status: str
    best_lr: float  # the best single run, for reference
    best_batch_tokens: float
    best_loss: float


@dataclass
class ScalingFit:
    measure: str
    seq_len: int
    groups: list[Group]
    lr_law: PowerLaw | None
    batch_law: PowerLaw | None
    loss_law: LossLaw | None
    notes: dict[str, str] = field(default_factory=dict)  # why a law is missing
    source: str = ""

    def to_dict(self) -> dict:
        return {"measure": self.measure, "seq_len": self.seq_len, "source": self.source, "notes": self.notes,
                "groups": [asdict(g) for g in self.groups],
                "lr_law": self.lr_law.to_dict() if self.lr_law else None,
                "batch_law": self.batch_law.to_dict() if self.batch_law else None,
                "loss_law": self.loss_law.to_dict() if self.loss_law else None}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ScalingFit:
        path = Path(path)
        if path.is_dir():
            path = path / "fit.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no fit here (run `qwen25 scaling fit` first)")
        try:
            raw = json.loads(path.read_text())
            return cls(raw["measure"], int(raw["seq_len"]), [Group(**g) for g in raw["groups"]],
                       PowerLaw.from_dict(raw["lr_law"]) if raw["lr_law"] else None,
                       PowerLaw.from_dict(raw["batch_law"]) if raw["batch_law"] else None,
                       LossLaw.from_dict(raw["loss_law"]) if raw["loss_law"] else None,
                       dict(raw.get("notes", {})), raw.get("source", ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a scaling fit ({e!r})") from None


def sizes(record: dict, measure: str) -> tuple[float, float]:
    """(activated N, total N) of a run in the chosen measure."""
    if measure == "total":
        return float(record["params_activated"]), float(record["params_total"])
    return float(record["params_activated_non_embedding"]), float(record["params_non_embedding"])


def _group_key(record: dict) -> str:
    settings = {k: v for k, v in record.get("settings", {}).items() if k not in ("lr", "batch")}
    return json.dumps(settings or {"model": record["model"], "tokens": record["tokens_target"]}, sort_keys=True)


def group_records(records: Sequence[dict], measure: str = "non_embedding", margin: float = 0.5) -> list[Group]:
    """The optimum of every group (in the order groups first appear)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(_group_key(r), []).append(r)
    groups = []
    for runs in by_key.values():
        ok = [r for r in runs if not r["diverged"] and r["final_loss"] is not None and math.isfinite(r["final_loss"])]
        n, n_total = sizes(runs[0], measure)
        first = runs[0]
        if not ok:
            groups.append(Group(first["model"], first["kind"], n, n_total, float(first["tokens_target"]), len(runs),
                                len(runs), None, None, None, "every run diverged", math.nan, math.nan, math.nan))
            continue
        x = np.log([r["lr"] for r in ok])
        y = np.log([r["batch_tokens"] for r in ok])
        z = np.array([r["final_loss"] for r in ok])
        opt = quadratic_optimum(x, y, z, margin)
        best = ok[int(np.argmin(z))]
        groups.append(Group(
            first["model"], first["kind"], n, n_total, float(first["tokens_target"]), len(runs), len(runs) - len(ok),
            None if opt.log_lr is None else float(np.exp(opt.log_lr)),
            None if opt.log_batch is None else float(np.exp(opt.log_batch)), opt.loss, opt.status,
            best["lr"], float(best["batch_tokens"]), best["final_loss"]))
    return groups


def fit_results(records: Sequence[dict], measure: str = "non_embedding", huber_delta: float = 1e-3,
                replicates: int = 1000, seed: int = 0, source: str = "") -> ScalingFit:
    """Optima per group, then the three laws on the groups whose optimum is inside their grid."""
    if not records:
        raise ValueError(f"{source or 'results'}: no records to fit")
    groups = group_records(records, measure)
    seq_lens = {r.get("seq_len", 0) for r in records}
    notes: dict[str, str] = {}

    def law(values: str, fit) -> PowerLaw | LossLaw | None:
        chosen = [g for g in groups if g.status == "ok" and getattr(g, values) is not None]
        try:
            return fit(chosen)
        except ValueError as e:
            notes[values] = str(e)
            return None

    def power(values: str):
        return lambda gs: fit_power_law([g.n for g in gs], [g.d for g in gs], [getattr(g, values) for g in gs],
                                        [g.kind == "moe" for g in gs], replicates=2 * replicates, seed=seed)

    lr_law = law("lr", power("lr"))
    batch_law = law("batch_tokens", power("batch_tokens"))
    loss_law = law("loss", lambda gs: fit_loss_law([g.loss for g in gs], [g.n for g in gs], [g.d for g in gs],
                                                   [g.n_total for g in gs], huber_delta, replicates, seed))
    return ScalingFit(measure, max(seq_lens), groups, lr_law, batch_law, loss_law, notes, source)
