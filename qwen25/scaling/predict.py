"""`qwen25 scaling predict`: the learning rate and batch size a fit recommends for a run of N parameters on D
tokens, with intervals, the loss that run should reach, and for a MoE the dense size it matches.

Intervals: for LR and batch, the bootstrap confidence interval of the law at (N, D); for the loss, the interval
a new run's final loss should fall in (fit uncertainty plus run-to-run scatter; `laws.LossLaw.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwen25.scaling.fit import ScalingFit

Interval = tuple[float, float, float]  # (estimate, low, high)


@dataclass
class Prediction:
    n: float
    d: float
    n_total: float | None  # MoE only
    lr: Interval | None
    batch_tokens: Interval | None
    loss: Interval | None
    matching_dense: Interval | None
    seq_len: int
    notes: list[str] = field(default_factory=list)

    @property
    def batch_sequences(self) -> int | None:
        """The recommended batch in whole sequences of the sweep's length (at least one)."""
        return None if self.batch_tokens is None else max(1, round(self.batch_tokens[0] / self.seq_len))


def predict(fit: ScalingFit, n: float, d: float, n_total: float | None = None) -> Prediction:
    """n: parameters in the fit's measure (for a MoE the activated ones); n_total: a MoE's total."""
    if not (n > 0 and d > 0) or (n_total is not None and n_total < n):
        raise ValueError(f"need N > 0, D > 0 and a MoE total >= its activated parameters (got N {n:g}, D {d:g}, "
                         f"total {n_total})")
    moe = n_total is not None and n_total > n
    notes = []
    fitted = [g for g in fit.groups if g.status == "ok"]
    if fitted:
        n_max, d_max = max(g.n for g in fitted), max(g.d for g in fitted)
        if n > n_max or d > d_max:
            notes.append(f"extrapolating beyond the fitted range (largest N {n_max:,.0f}, largest D {d_max:,.0f})")

    def hyper(law, name: str) -> Interval | None:
        if law is None:
            notes.append(f"no {name} law: {fit.notes.get('lr' if name == 'LR' else 'batch_tokens', 'not fitted')}")
            return None
        if moe and "moe" not in law.terms:
            notes.append(f"the {name} law has no MoE runs: the dense law at the activated size is used")
        return law.predict(n, d, moe=moe and "moe" in law.terms)

    lr = hyper(fit.lr_law, "LR")
    batch = hyper(fit.batch_law, "batch")
    loss = matching = None
    if fit.loss_law is None:
        notes.append(f"no loss law: {fit.notes.get('loss', 'not fitted')}")
    elif moe and not fit.loss_law.has_gamma:
        notes.append("the loss law has no MoE runs: no loss prediction or matching dense size for a MoE")
    else:
        loss = fit.loss_law.predict(n, d, n_total if moe else None)
        if moe:
            matching = fit.loss_law.matching_dense(n, n_total)
    return Prediction(n, d, n_total if moe else None, lr, batch, loss, matching, fit.seq_len, notes)


def _interval(value: Interval, fmt: str) -> str:
    v, lo, hi = value
    return f"{v:{fmt}} (95% interval {lo:{fmt}} .. {hi:{fmt}})"


def format_prediction(p: Prediction, measure: str) -> str:
    what = f"{p.n:,.0f} activated of {p.n_total:,.0f}" if p.n_total else f"{p.n:,.0f}"
    lines = [f"model: {what} {measure.replace('_', '-')} parameters, {p.d:,.0f} training tokens"]
    if p.lr:
        lines.append(f"learning rate: {_interval(p.lr, '.3g')}")
    if p.batch_tokens:
        lines.append(f"batch size: {_interval(p.batch_tokens, ',.0f')} tokens = {p.batch_sequences} sequences of "
                     f"{p.seq_len}")
    if p.loss:
        lines.append(f"final held-out loss: {_interval(p.loss, '.4f')} nats/token")
    if p.matching_dense:
        lines.append(f"matches a dense model of {_interval(p.matching_dense, ',.0f')} parameters")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def predict_text(fit_path: str, n: float, d: float, n_total: float | None = None) -> str:
    """`qwen25 scaling predict`: the prediction for (N, D) from a saved fit, as text."""
    fit = ScalingFit.load(fit_path)
    return format_prediction(predict(fit, n, d, n_total), fit.measure)
