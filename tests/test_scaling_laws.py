"""The scaling fits on synthetic data drawn from known laws: they recover the constants, and their bootstrap
intervals cover the truth at about the nominal rate over repeated draws."""

import numpy as np
import pytest

from qwen25.scaling.fit import fit_results, group_records
from qwen25.scaling.laws import fit_loss_law, fit_power_law, quadratic_optimum
from qwen25.scaling.predict import predict

# the truth the synthetic sweeps are drawn from
E, A, ALPHA, B, BETA = 1.8, 60.0, 0.32, 100.0, 0.27
LR0, LR_N, LR_D = 0.5, -0.30, 0.05  # mu_opt = LR0 * N^LR_N * D^LR_D
BT0, BT_N, BT_D = 0.8, 0.10, 0.30  # B_opt (tokens) = BT0 * N^BT_N * D^BT_D
SIZES = [2e4, 5e4, 1.2e5, 3e5]
BUDGETS = [2e5, 5e5, 1.2e6]


def chinchilla(n, d):
    return E + A / np.power(n, ALPHA) + B / np.power(d, BETA)


def mu_opt(n, d):
    return LR0 * n**LR_N * d**LR_D


def b_opt(n, d):
    return BT0 * n**BT_N * d**BT_D


def test_quadratic_optimum_is_exact_on_a_quadratic_and_between_grid_points():
    x, y = np.meshgrid(np.log([1e-3, 2e-3, 4e-3, 8e-3]), np.log([1024, 2048, 4096]))
    x, y = x.ravel(), y.ravel()
    x0, y0 = np.log(3e-3), np.log(1500.0)
    z = 3.0 + 0.4 * (x - x0) ** 2 + 0.2 * (y - y0) ** 2 + 0.1 * (x - x0) * (y - y0)
    opt = quadratic_optimum(x, y, z)
    assert opt.status == "ok"
    assert opt.log_lr == pytest.approx(x0, abs=1e-9) and opt.log_batch == pytest.approx(y0, abs=1e-9)
    assert opt.loss == pytest.approx(3.0, abs=1e-9)
    # one dimension: LR only (a single batch size)
    one = quadratic_optimum(x[:4], y[:4], z[:4])
    assert one.log_batch is None and one.status == "ok"
    assert one.log_lr == pytest.approx(x0 - 0.1 * (y[0] - y0) / 0.8, abs=1e-9)


def test_profiles_through_the_best_run_when_the_joint_quadratic_fails():
    """Loss that climbs steeply above the best LR (as small models' loss does) is far from a joint quadratic over
    the grid; the fallback locates LR and batch on the best run's row and column."""
    from qwen25.scaling.laws import _optimum_profiles

    x, y = np.meshgrid(np.log([1e-3, 2e-3, 4e-3, 8e-3]), np.log([512, 1024, 2048]))
    x, y = x.ravel(), y.ravel()
    x0, y0 = np.log(2.5e-3), np.log(900.0)
    z = 3.0 + 0.4 * (x - x0) ** 2 + 0.2 * (y - y0) ** 2
    opt = _optimum_profiles(x, y, z, 0.5, "joint failed")
    assert opt.status == "ok"
    assert opt.log_lr == pytest.approx(x0, abs=1e-9) and opt.log_batch == pytest.approx(y0, abs=1e-9)
    steep = z + np.where(x > x0, 3.0 * (x - x0) ** 3, 0.0) * np.exp(y - y0)  # not a joint quadratic
    opt = quadratic_optimum(x, y, steep)
    assert opt.status == "ok" and abs(opt.log_lr - x0) < np.log(2) and abs(opt.log_batch - y0) < np.log(2)
    bad = _optimum_profiles(x, y, 3.0 + x, 0.5, "joint failed")  # monotone in LR: no optimum anywhere
    assert bad.status.startswith("joint failed; through the best run:")


def test_quadratic_optimum_refuses_what_it_cannot_locate():
    x = np.log([1e-3, 2e-3, 4e-3])
    y = np.zeros(3)
    assert "beyond the grid" in quadratic_optimum(x, y, 3 + (x - np.log(0.1)) ** 2).status  # far outside
    assert "not convex" in quadratic_optimum(x, y, 3 - (x - x[1]) ** 2).status
    assert "too few" in quadratic_optimum(x[:2], y[:2], np.array([3.0, 2.9])).status
    assert quadratic_optimum(x, y, np.array([3.0, np.nan, 3.1])).status.startswith("too few")


def test_power_law_recovers_exponents_and_interval_covers_at_nominal_rate():
    rng = np.random.default_rng(0)
    n, d = (v.ravel() for v in np.meshgrid(SIZES, BUDGETS))
    covered_alpha = covered_pred = 0
    draws = 200
    for _ in range(draws):
        y = mu_opt(n, d) * np.exp(rng.normal(0, 0.08, len(n)))
        law = fit_power_law(n, d, y, replicates=1000, seed=int(rng.integers(1 << 30)))
        est, lo, hi = law.exponent("log_n")
        covered_alpha += lo <= LR_N <= hi
        _, lo, hi = law.predict(1e6, 4e6)
        covered_pred += lo <= mu_opt(1e6, 4e6) <= hi
    assert 0.88 <= covered_alpha / draws <= 0.99
    assert 0.88 <= covered_pred / draws <= 0.99
    exact = fit_power_law(n, d, mu_opt(n, d) * np.exp(rng.normal(0, 1e-4, len(n))))
    assert exact.exponent("log_n")[0] == pytest.approx(LR_N, abs=1e-3)
    assert exact.exponent("log_d")[0] == pytest.approx(LR_D, abs=1e-3)


def test_power_law_needs_enough_groups_and_varied_terms():
    with pytest.raises(ValueError, match="need at least 5"):
        fit_power_law([1e4, 2e4, 4e4], [1e5, 2e5, 1e5], [1e-3, 2e-3, 3e-3])
    law = fit_power_law([1e4, 2e4, 4e4, 8e4], [1e5] * 4, [4e-3, 3e-3, 2.2e-3, 1.7e-3])
    assert law.terms == ["log_n"] and law.exponent("log_d") == (0.0, 0.0, 0.0)


def test_loss_law_recovers_chinchilla_constants_with_noise():
    rng = np.random.default_rng(1)
    n, d = (v.ravel() for v in np.meshgrid(SIZES + [8e5], BUDGETS + [3e6]))
    loss = chinchilla(n, d) * np.exp(rng.normal(0, 0.003, len(n)))
    law = fit_loss_law(loss, n, d, replicates=300, seed=0)
    c = law.constants()
    assert c["alpha"][0] == pytest.approx(ALPHA, abs=0.06)
    assert c["beta"][0] == pytest.approx(BETA, abs=0.06)
    assert c["E"][0] == pytest.approx(E, abs=0.25)
    for name, truth in (("alpha", ALPHA), ("beta", BETA), ("E", E)):
        assert c[name][1] <= truth <= c[name][2], (name, c[name])
    predicted, lo, hi = law.predict(3e6, 1e7)
    assert lo <= chinchilla(3e6, 1e7) <= hi and predicted == pytest.approx(chinchilla(3e6, 1e7), rel=0.02)


def test_loss_prediction_interval_covers_new_runs_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    n, d = (v.ravel() for v in np.meshgrid(SIZES, BUDGETS))
    noise = 0.01
    covered = 0
    draws = 30
    for _ in range(draws):
        loss = chinchilla(n, d) * np.exp(rng.normal(0, noise, len(n)))
        law = fit_loss_law(loss, n, d, replicates=150, seed=int(rng.integers(1 << 30)))
        new_run = chinchilla(6e5, 2.4e6) * np.exp(rng.normal(0, noise))  # larger than any fitted N and D
        _, lo, hi = law.predict(6e5, 2.4e6)
        covered += lo <= new_run <= hi
    assert covered / draws >= 0.8


def test_moe_gamma_and_matching_dense_size_are_recovered():
    rng = np.random.default_rng(3)
    gamma = 0.4
    n, d = (v.ravel() for v in np.meshgrid(SIZES, BUDGETS))
    n_act = np.repeat([2e4, 5e4], 3)
    n_tot = n_act * np.array([2.0, 4.0, 8.0] * 2)
    d_moe = np.tile([5e5, 1.2e6, 5e5], 2)
    all_act = np.concatenate([n, n_act])
    all_tot = np.concatenate([n, n_tot])
    all_d = np.concatenate([d, d_moe])
    loss = chinchilla(all_act * (all_tot / all_act) ** gamma, all_d) * np.exp(rng.normal(0, 0.002, len(all_d)))
    law = fit_loss_law(loss, all_act, all_d, all_tot, replicates=300)
    c = law.constants()
    assert c["gamma"][0] == pytest.approx(gamma, abs=0.08) and c["gamma"][1] <= gamma <= c["gamma"][2]
    matched, lo, hi = law.matching_dense(3e4, 1.2e5)
    assert matched == pytest.approx(3e4 * 4**gamma, rel=0.1) and lo <= 3e4 * 4**gamma <= hi


def synthetic_records(rng, noise=0.002, lrs=(0.5, 1.0, 2.0), batches=(0.5, 1.0, 2.0)):
    """A sweep drawn from the laws: each (N, D) group a 3 x 3 grid around its optimum, loss quadratic in log LR
    and log batch with a cross term, plus noise."""
    records = []
    for n in SIZES:
        for d in BUDGETS:
            mu, bt = mu_opt(n, d), b_opt(n, d)
            for fb in batches:
                for fl in lrs:
                    dx, dy = np.log(fl * 1.1), np.log(fb * 0.9)
                    loss = chinchilla(n, d) + 0.15 * dx * dx + 0.1 * dy * dy + 0.03 * dx * dy
                    records.append({"id": f"{n}-{d}-{fl}-{fb}", "model": f"d{int(n)}", "kind": "dense",
                                    "params_non_embedding": n, "params_total": n + 1e4,
                                    "params_activated_non_embedding": n, "params_activated": n + 1e4,
                                    "tokens_target": d, "lr": mu * fl, "batch_tokens": bt * fb, "seq_len": 64,
                                    "final_loss": loss * np.exp(rng.normal(0, noise)), "diverged": False,
                                    "settings": {"model": n, "tokens": d, "lr": mu * fl, "batch": bt * fb}})
    return records


def test_end_to_end_fit_recovers_the_laws_from_a_synthetic_sweep():
    rng = np.random.default_rng(4)
    records = synthetic_records(rng)
    groups = group_records(records)
    assert len(groups) == len(SIZES) * len(BUDGETS) and all(g.status == "ok" for g in groups)
    fit = fit_results(records, replicates=300)
    assert fit.lr_law.exponent("log_n")[0] == pytest.approx(LR_N, abs=0.05)
    assert fit.lr_law.exponent("log_d")[0] == pytest.approx(LR_D, abs=0.05)
    assert fit.batch_law.exponent("log_n")[0] == pytest.approx(BT_N, abs=0.05)
    assert fit.batch_law.exponent("log_d")[0] == pytest.approx(BT_D, abs=0.05)
    p = predict(fit, 6e5, 2.4e6)
    # the synthetic optimum sits at 1/1.1 x the grid centre in LR and 1/0.9 x in batch
    assert p.lr[1] <= mu_opt(6e5, 2.4e6) / 1.1 <= p.lr[2]
    assert p.batch_tokens[1] <= b_opt(6e5, 2.4e6) / 0.9 <= p.batch_tokens[2]
    assert p.loss[1] <= chinchilla(6e5, 2.4e6) <= p.loss[2]
    assert any("extrapolating" in note for note in p.notes)


def test_a_grid_that_misses_the_optimum_is_left_out_of_the_laws():
    rng = np.random.default_rng(5)
    records = synthetic_records(rng)
    n0 = SIZES[0]
    for r in records:  # move the smallest shape's LRs far above its optimum
        if r["params_non_embedding"] == n0:
            r["lr"] *= 40
            d = r["tokens_target"]
            dx, dy = np.log(r["lr"] / mu_opt(n0, d) / 1.1), np.log(r["batch_tokens"] / b_opt(n0, d) / 0.9)
            r["final_loss"] = chinchilla(n0, d) + 0.15 * dx * dx + 0.1 * dy * dy + 0.03 * dx * dy
    fit = fit_results(records, replicates=200)
    skipped = [g for g in fit.groups if g.n == n0]
    assert all("beyond the grid" in g.status for g in skipped)
    assert fit.lr_law.groups == len(fit.groups) - len(skipped)
