"""The statistics of the scaling fits, on plain numpy arrays: the optimum of one (N, D) group from a quadratic in
log LR and log batch, power laws for the optimal LR and batch, the Chinchilla loss law fitted with a Huber loss
on log loss, and the bootstrap intervals of all three.

Why these choices (the Qwen2.5 report publishes no formulas; this is our own method):
- Per group the optimum is the minimum of a least-squares quadratic through every run of the group, not its best
  single run: one run's loss carries seed and data noise, the quadratic averages it, and its minimum can lie
  between grid points.
- The optimal LR and batch follow `log y = a + alpha log N + beta log D (+ c_moe [MoE])`, fitted by least squares
  on the groups whose optimum lies inside their grid. The intervals come from a residual bootstrap (residuals
  divided by sqrt(1 - leverage), so small samples are not over-confident).
- The loss law is Chinchilla's `L = E + A / N^alpha + B / D^beta`, fitted as Hoffmann et al. did: Huber loss on
  log L, minimised from a grid of initialisations (the objective has several basins). For MoE, N is an
  effective size `N_eff = N_act * (N_total / N_act)^gamma`: gamma = 0 means only activated parameters count,
  gamma = 1 means all of them, and the dense model a MoE configuration matches is the one with N = N_eff.
  Its intervals come from a residual bootstrap (residuals inflated by sqrt(n / (n - p))); the interval for a new
  run's loss adds a resampled residual to each bootstrap prediction, so it covers run-to-run noise as well.

The Huber fit is a Levenberg-Marquardt iteration on iteratively reweighted least squares, vectorised over
problems (initialisations or bootstrap replicates), so thousands of fits cost one batched solve per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95  # two-sided level of every interval


def t_over_z(df: int, level: float = LEVEL) -> float:
    """Student's t quantile over the normal one at `level` (two-sided), from the Cornish-Fisher expansion
    (Abramowitz & Stegun 26.7.5; within 1% for df >= 2). Bootstrap deviations are scaled by it: a bootstrap
    interval is a normal-theory interval with an estimated scale, too narrow when few points estimate it."""
    z = float(np.sqrt(2) * _erfinv(level))
    v = float(df)
    t = (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
         + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
         + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))
    return t / z


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method on math.erf (double precision in a few steps)."""
    x = 0.0
    for _ in range(60):
        step = (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
        x -= step
        if abs(step) < 1e-15:
            break
    return x


# ---- one group: the quadratic's minimum ----------------------------------------------------------------------


@dataclass
class Optimum:
    """The minimum of the quadratic through one group's runs (log LR, log batch -> loss)."""

    log_lr: float | None  # None when the group's LR was not varied (or the fit has no minimum)
    log_batch: float | None  # None when the group's batch was not varied
    loss: float | None  # the quadratic's value at its minimum
    status: str  # "ok", or why the group gives no optimum


def _spacing(values: np.ndarray) -> float:
    distinct = np.unique(values)
    return float(np.median(np.diff(distinct))) if len(distinct) > 1 else 0.0


def quadratic_optimum(log_lr: np.ndarray, log_batch: np.ndarray, loss: np.ndarray, margin: float = 0.5) -> Optimum:
    """Least-squares quadratic through the runs and its minimum.

    Two dimensions (with the cross term) when LR and batch both take >= 3 values; one (LR or batch) when only one
    of them does, on the runs at the most common value of the other. The minimum counts only when the curvature is
    positive and it lies within `margin` grid steps of the values tried (further out it is an extrapolation).
    """
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (log_lr, log_batch, loss))
    keep = np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    nx, ny = len(np.unique(x)), len(np.unique(y))
    if nx >= 3 and ny >= 3 and len(z) >= 6:
        joint = _optimum_2d(x, y, z, margin)
        return joint if joint.status == "ok" else _optimum_profiles(x, y, z, margin, joint.status)
    if nx >= 3:
        values, counts = np.unique(y, return_counts=True)
        at = y == values[np.argmax(counts)]
        opt, value, status = _optimum_1d(x[at], z[at], margin, "learning rate")
        return Optimum(opt, None, value, status)
    if ny >= 3:
        values, counts = np.unique(x, return_counts=True)
        at = x == values[np.argmax(counts)]
        opt, value, status = _optimum_1d(y[at], z[at], margin, "batch size")
        return Optimum(None, opt, value, status)
    return Optimum(None, None, None, f"too few finished runs ({len(z)}; {nx} learning rates, {ny} batch sizes: "
                                     "need 3 values of at least one)")


def _optimum_profiles(x: np.ndarray, y: np.ndarray, z: np.ndarray, margin: float, why: str) -> Optimum:
    """When the joint quadratic fails (loss far from quadratic over the whole grid: it rises much faster above the
    best LR than below), one-dimensional quadratics through the best run's row and column: log LR at the best
    run's batch, log batch at the best run's LR. Each needs 3 values on its line."""
    best = int(np.argmin(z))
    row, column = y == y[best], x == x[best]
    lr, lr_loss, lr_status = _optimum_1d(x[row], z[row], margin, "learning rate")
    batch, batch_loss, batch_status = _optimum_1d(y[column], z[column], margin, "batch size")
    if lr_status != "ok" or batch_status != "ok":
        return Optimum(None, None, None, f"{why}; through the best run: {lr_status if lr_status != 'ok' else batch_status}")
    return Optimum(lr, batch, min(lr_loss, batch_loss), "ok")


def _inside(value: float, tried: np.ndarray, margin: float) -> bool:
    step = _spacing(tried) * margin
    return tried.min() - step <= value <= tried.max() + step


def _optimum_1d(x: np.ndarray, z: np.ndarray, margin: float, what: str) -> tuple[float | None, float | None, str]:
    if len(np.unique(x)) < 3:
        return None, None, f"fewer than 3 {what}s with a finished run"
    centre = x.mean()
    c2, c1, c0 = np.polyfit(x - centre, z, 2)
    if c2 <= 0:
        return None, None, f"loss is not convex in log {what} (widen the grid)"
    opt = -c1 / (2 * c2)
    value = c0 - c1 * c1 / (4 * c2)
    if not _inside(opt + centre, x, margin):
        return None, None, f"{what} optimum beyond the grid (widen it)"
    return float(opt + centre), float(value), "ok"


def _optimum_2d(x: np.ndarray, y: np.ndarray, z: np.ndarray, margin: float) -> Optimum:
    cx, cy = x.mean(), y.mean()
    u, v = x - cx, y - cy
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    c0, gu, gv, huu, huv, hvv = coef
    hessian = np.array([[2 * huu, huv], [huv, 2 * hvv]])
    if np.any(np.linalg.eigvalsh(hessian) <= 0):
        return Optimum(None, None, None, "loss is not convex in (log LR, log batch) (widen the grid)")
    step = np.linalg.solve(hessian, -np.array([gu, gv]))
    value = c0 + 0.5 * float(np.array([gu, gv]) @ step)
    lr, batch = float(step[0] + cx), float(step[1] + cy)
    if not _inside(lr, x, margin):
        return Optimum(None, None, None, "learning-rate optimum beyond the grid (widen it)")
    if not _inside(batch, y, margin):
        return Optimum(None, None, None, "batch-size optimum beyond the grid (widen it)")
    return Optimum(lr, batch, float(value), "ok")


# ---- power laws for the optimal LR and batch -----------------------------------------------------------------


@dataclass
class PowerLaw:
    """`log y = intercept + alpha log N + beta log D + c_moe * [MoE]`; terms whose variable never varied are left
    out (their coefficient is then 0 and not estimated)."""

    terms: list[str]  # subset of ["log_n", "log_d", "moe"] after the intercept
    coef: np.ndarray  # [1 + len(terms)]
    replicates: np.ndarray  # [R, 1 + len(terms)] bootstrap coefficients
    residual_sd: float  # of log y around the law
    groups: int

    def _row(self, n: float, d: float, moe: bool) -> np.ndarray:
        values = {"log_n": np.log(n), "log_d": np.log(d), "moe": float(moe)}
        return np.array([1.0] + [values[t] for t in self.terms])

    def predict(self, n: float, d: float, moe: bool = False) -> tuple[float, float, float]:
        """(value, low, high): the law at (N, D) and its bootstrap confidence interval."""
        row = self._row(n, d, moe)
        draws = self.replicates @ row
        lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(np.exp(self.coef @ row)), float(np.exp(lo)), float(np.exp(hi))

    def exponent(self, term: str) -> tuple[float, float, float]:
        """(estimate, low, high) of one coefficient (0 when the term was not fitted)."""
        if term not in self.terms:
            return 0.0, 0.0, 0.0
        k = 1 + self.terms.index(term)
        lo, hi = np.quantile(self.replicates[:, k], [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(self.coef[k]), float(lo), float(hi)

    def to_dict(self) -> dict:
        return {"terms": self.terms, "coef": self.coef.tolist(), "replicates": self.replicates.tolist(),
                "residual_sd": self.residual_sd, "groups": self.groups}

    @classmethod
    def from_dict(cls, raw: dict) -> PowerLaw:
        return cls(list(raw["terms"]), np.asarray(raw["coef"], dtype=np.float64),
                   np.asarray(raw["replicates"], dtype=np.float64), float(raw["residual_sd"]), int(raw["groups"]))


def fit_power_law(n: np.ndarray, d: np.ndarray, y: np.ndarray, moe: np.ndarray | None = None,
                  replicates: int = 2000, seed: int = 0) -> PowerLaw:
    """Least squares of log y on log N, log D (and a MoE indicator), with a residual bootstrap.

    Raises ValueError when there are too few groups for the terms that vary (at least two residual degrees of
    freedom are needed for an interval).
    """
    n, d, y = (np.asarray(v, dtype=np.float64) for v in (n, d, y))
    moe = np.zeros(len(y)) if moe is None else np.asarray(moe, dtype=np.float64)
    columns = {"log_n": np.log(n), "log_d": np.log(d), "moe": moe}
    terms = [t for t, col in columns.items() if len(np.unique(col)) > 1]
    design = np.column_stack([np.ones(len(y))] + [columns[t] for t in terms])
    p = design.shape[1]
    if len(y) < p + 2:
        raise ValueError(f"{len(y)} group optima for a law with {p} coefficients ({', '.join(['1'] + terms)}): "
                         f"need at least {p + 2}")
    if np.linalg.matrix_rank(design) < p:
        raise ValueError(f"the group optima do not separate the terms {terms} (vary N and D independently)")
    target = np.log(y)
    pinv = np.linalg.pinv(design)
    coef = pinv @ target
    fitted = design @ coef
    residuals = target - fitted
    leverage = np.einsum("ij,ji->i", design, pinv)
    adjusted = residuals / np.sqrt(np.clip(1.0 - leverage, 1e-6, None))
    adjusted -= adjusted.mean()
    rng = np.random.default_rng(seed)
    draws = adjusted[rng.integers(0, len(y), size=(replicates, len(y)))] * t_over_z(len(y) - p)
    boot = (fitted[None, :] + draws) @ pinv.T  # [R, p]
    sd = float(np.sqrt(residuals @ residuals / (len(y) - p)))
    return PowerLaw(terms, coef, boot, sd, len(y))


# ---- the loss law ---------------------------------------------------------------------------------------------


PARAM_NAMES = ["e", "a", "alpha", "b", "beta", "gamma"]  # E = exp(e), A = exp(a), B = exp(b)


def _log_loss(theta: np.ndarray, log_n: np.ndarray, ratio: np.ndarray, log_d: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """log L for every problem and point, and its Jacobian. theta [R, p] (p = 5 dense, 6 with gamma);
    log_n, ratio = log(N_total / N_act), log_d: [n]. Returns ([R, n], [R, n, p])."""
    e, a, alpha, b, beta = (theta[:, k:k + 1] for k in range(5))
    gamma = theta[:, 5:6] if theta.shape[1] > 5 else np.zeros_like(e)
    size = log_n[None, :] + gamma * ratio[None, :]
    terms = np.stack([np.broadcast_to(e, size.shape), a - alpha * size, b - beta * log_d[None, :]], axis=-1)
    top = terms.max(axis=-1, keepdims=True)
    weights = np.exp(terms - top)
    total = weights.sum(axis=-1, keepdims=True)
    value = (top + np.log(total))[..., 0]
    w = weights / total
    jac = [w[..., 0], w[..., 1], -w[..., 1] * size, w[..., 2], -w[..., 2] * log_d[None, :]]
    if theta.shape[1] > 5:
        jac.append(-w[..., 1] * alpha * ratio[None, :])
    return value, np.stack(jac, axis=-1)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _project(theta: np.ndarray) -> np.ndarray:
    """Keep the exponents >= 0 and gamma in [0, 1] (a larger model or more data never raises the loss; a MoE counts
    between its activated and its total parameters)."""
    theta = theta.copy()
    theta[:, [2, 4]] = np.maximum(theta[:, [2, 4]], 0.0)
    if theta.shape[1] > 5:
        theta[:, 5] = np.clip(theta[:, 5], 0.0, 1.0)
    return theta


def huber_fit(theta: np.ndarray, log_n: np.ndarray, ratio: np.ndarray, log_d: np.ndarray, target: np.ndarray,
              delta: float, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Minimise sum Huber(log L(theta) - target) for R problems at once (Levenberg-Marquardt on iteratively
    reweighted least squares, projected onto the bounds of `_project`). theta [R, p] starting points; target
    [R, n] or [n]. Returns (theta, objective)."""
    theta = _project(np.array(theta, dtype=np.float64))
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), (theta.shape[0], len(log_n)))
    p = theta.shape[1]
    damping = np.full(theta.shape[0], 1e-3)
    value, jac = _log_loss(theta, log_n, ratio, log_d)
    resid = value - target
    objective = _huber(resid, delta).sum(axis=1)
    checkpoint = objective.copy()
    for iteration in range(1, iterations + 1):
        weight = np.where(np.abs(resid) <= delta, 1.0, delta / np.maximum(np.abs(resid), 1e-300))
        jw = jac * weight[..., None]
        normal = np.einsum("rnp,rnq->rpq", jw, jac)
        grad = np.einsum("rnp,rn->rp", jw, resid)
        diag = np.einsum("rpp->rp", normal)
        lhs = normal + (damping[:, None] * (diag + 1e-12))[..., None] * np.eye(p)
        try:
            step = np.linalg.solve(lhs, -grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -grad * 1e-3
        trial = _project(theta + step)
        t_value, t_jac = _log_loss(trial, log_n, ratio, log_d)
        t_resid = t_value - target
        t_objective = _huber(t_resid, delta).sum(axis=1)
        better = np.isfinite(t_objective) & (t_objective < objective)
        theta = np.where(better[:, None], trial, theta)
        resid = np.where(better[:, None], t_resid, resid)
        jac = np.where(better[:, None, None], t_jac, jac)
        objective = np.where(better, t_objective, objective)
        damping = np.clip(np.where(better, damping / 3, damping * 4), 1e-12, 1e12)
        if iteration % 5 == 0:  # stop once no problem improved by more than 1e-9 (relative) in 5 iterations
            if np.all(checkpoint - objective <= 1e-9 * np.maximum(objective, 1e-30)):
                break
            checkpoint = objective.copy()
    return theta, objective


def initial_grid(loss: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, with_gamma: bool) -> np.ndarray:
    """Starting points spread over the plausible region: the irreducible loss below the smallest loss seen, the
    N and D terms a tenth or a half of the typical loss at the typical N and D, exponents from 0.1 to 1."""
    low, typical = np.log(loss.min()), float(np.median(loss))
    rows = []
    for e_drop in (1.0, 0.4, 0.15, 0.04):
        for alpha in (0.1, 0.25, 0.5, 1.0):
            for beta in (0.1, 0.25, 0.5, 1.0):
                for share_n in (0.1, 0.5):
                    for share_d in (0.1, 0.5):
                        a = np.log(share_n * typical) + alpha * np.median(log_n)
                        b = np.log(share_d * typical) + beta * np.median(log_d)
                        rows.append([low - e_drop, a, alpha, b, beta] + ([0.5] if with_gamma else []))
    return np.array(rows)


@dataclass
class LossLaw:
    """Chinchilla's law, for MoE with N_eff = N_act * (N_total / N_act)^gamma; theta = [e, a, alpha, b, beta
    (, gamma)]."""

    theta: np.ndarray
    replicates: np.ndarray  # [R, p]
    residuals: np.ndarray  # inflated, centred residuals of log L, drawn into prediction intervals
    delta: float
    groups: int
    seed: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def has_gamma(self) -> bool:
        return len(self.theta) > 5

    def constants(self) -> dict[str, tuple[float, float, float]]:
        """E, A, alpha, B, beta (and gamma) with their bootstrap intervals."""
        out = {}
        q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
        for k, name in enumerate(PARAM_NAMES[:len(self.theta)]):
            transform = np.exp if name in ("e", "a", "b") else (lambda v: v)
            lo, hi = np.quantile(transform(self.replicates[:, k]), q)
            out[{"e": "E", "a": "A", "b": "B"}.get(name, name)] = (float(transform(self.theta[k])), float(lo),
                                                                    float(hi))
        return out

    def _features(self, n_act: float, n_total: float | None, d: float) -> tuple[np.ndarray, ...]:
        ratio = 0.0 if n_total is None else np.log(n_total / n_act)
        return np.array([np.log(n_act)]), np.array([ratio]), np.array([np.log(d)])

    def predict(self, n_act: float, d: float, n_total: float | None = None) -> tuple[float, float, float]:
        """(loss, low, high): the law's loss at (N, D) and the interval a new run's final loss should fall in
        (bootstrap fit uncertainty plus a resampled residual)."""
        if n_total is not None and n_total != n_act and not self.has_gamma:
            raise ValueError("this fit has no MoE runs, so it cannot place a MoE configuration (gamma unknown)")
        feats = self._features(n_act, n_total, d)
        point, _ = _log_loss(self.theta[None, :], *feats)
        draws, _ = _log_loss(self.replicates, *feats)
        rng = np.random.default_rng(self.seed + 1)
        noisy = draws[:, 0] + self.residuals[rng.integers(0, len(self.residuals), size=len(draws))]
        lo, hi = np.quantile(noisy, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(np.exp(point[0, 0])), float(np.exp(lo)), float(np.exp(hi))

    def matching_dense(self, n_act: float, n_total: float) -> tuple[float, float, float]:
        """The dense size (same N measure) whose loss this MoE configuration matches at every D: N_eff, interval."""
        if not self.has_gamma:
            raise ValueError("this fit has no MoE runs, so it cannot say which dense size a MoE matches")
        ratio = np.log(n_total / n_act)
        draws = np.log(n_act) + self.replicates[:, 5] * ratio
        lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(n_act * (n_total / n_act) ** self.theta[5]), float(np.exp(lo)), float(np.exp(hi))

    def to_dict(self) -> dict:
        return {"theta": self.theta.tolist(), "replicates": self.replicates.tolist(),
                "residuals": self.residuals.tolist(), "delta": self.delta, "groups": self.groups, "seed": self.seed}

    @classmethod
    def from_dict(cls, raw: dict) -> LossLaw:
        return cls(np.asarray(raw["theta"], dtype=np.float64), np.asarray(raw["replicates"], dtype=np.float64),
                   np.asarray(raw["residuals"], dtype=np.float64), float(raw["delta"]), int(raw["groups"]),
                   int(raw.get("seed", 0)))


def fit_loss_law(loss: np.ndarray, n_act: np.ndarray, d: np.ndarray, n_total: np.ndarray | None = None,
                 delta: float = 1e-3, replicates: int = 1000, seed: int = 0) -> LossLaw:
    """Fit L(N, D) (and gamma when some N_total differs from N_act) with a Huber loss on log L from a grid of
    starting points, then a residual bootstrap (each replicate starts from the fit)."""
    loss, n_act, d = (np.asarray(v, dtype=np.float64) for v in (loss, n_act, d))
    n_total = n_act if n_total is None else np.asarray(n_total, dtype=np.float64)
    log_n, log_d, ratio = np.log(n_act), np.log(d), np.log(n_total / n_act)
    with_gamma = bool(np.any(ratio > 1e-9))
    p = 6 if with_gamma else 5
    if len(loss) < p + 2:
        raise ValueError(f"{len(loss)} group optima for a loss law with {p} constants: need at least {p + 2} "
                         "(more model sizes or token budgets)")
    if len(np.unique(log_n)) < 2 or len(np.unique(log_d)) < 2:
        raise ValueError("the loss law needs at least two model sizes and two token budgets")
    target = np.log(loss)
    starts = initial_grid(loss, log_n, log_d, with_gamma)
    fits, objective = huber_fit(starts, log_n, ratio, log_d, target, delta)
    theta = fits[int(np.nanargmin(objective))]
    fitted, _ = _log_loss(theta[None, :], log_n, ratio, log_d)
    residuals = target - fitted[0]
    residuals = (residuals - residuals.mean()) * np.sqrt(len(loss) / (len(loss) - p))
    rng = np.random.default_rng(seed)
    draws = fitted[0][None, :] + residuals[rng.integers(0, len(loss), size=(replicates, len(loss)))]
    boot, _ = huber_fit(np.repeat(theta[None, :], replicates, axis=0), log_n, ratio, log_d, draws, delta)
    return LossLaw(theta, boot, residuals, delta, len(loss), seed)
