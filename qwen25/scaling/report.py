"""The fit as a reader sees it: PNG plots (loss against LR per size, the fitted laws with their data, predicted
against observed loss) and a markdown summary, written to a directory and optionally into a document between
markers, so a rerun replaces its own section and nothing else."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qwen25.io import atomic_write_text
from qwen25.scaling.fit import ScalingFit, fit_results
from qwen25.scaling.results import read_results

Observed = tuple[str, float, tuple[float, float, float]]  # (label, observed loss, predicted (loss, low, high))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(values: Sequence[float]) -> dict[float, tuple]:
    plt = _pyplot()
    distinct = sorted(set(values))
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(distinct) - 1, 1) * 0.9) for i, v in enumerate(distinct)}


def plot_loss_vs_lr(records: Sequence[dict], fit: ScalingFit, out: Path) -> None:
    """One panel per token budget: final loss against LR for every shape (runs at the batch closest to the group's
    optimum), the group's optimum as a star."""
    plt = _pyplot()
    budgets = sorted({g.d for g in fit.groups})
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), dpi=110, squeeze=False)
    colour = _colours([g.n for g in fit.groups])
    for ax, d in zip(axes[0], budgets):
        for g in (g for g in fit.groups if g.d == d):
            runs = [r for r in records if r["model"] == g.model and float(r["tokens_target"]) == d
                    and r["final_loss"] is not None]
            if not runs:
                continue
            target = g.batch_tokens or g.best_batch_tokens
            batch = min({r["batch_tokens"] for r in runs}, key=lambda b: abs(math.log(b / target)))
            at = sorted((r["lr"], r["final_loss"]) for r in runs if r["batch_tokens"] == batch)
            style = "o--" if g.kind == "moe" else "o-"
            ax.plot(*zip(*at), style, ms=3.5, color=colour[g.n], label=f"{g.model} (B={batch:,})")
            if g.lr is not None and g.loss is not None:
                ax.plot([g.lr], [g.loss], "*", ms=11, color=colour[g.n], mec="black", mew=0.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(f"D = {d:,.0f} tokens", fontsize=10)
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    axes[0][0].set_ylabel("final held-out loss (nats/token)")
    fig.suptitle("Loss against learning rate (stars: the quadratic's optimum)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_laws(fit: ScalingFit, out: Path) -> None:
    """Optimal LR, optimal batch and optimal loss against N, one colour per D, the fitted laws as lines."""
    plt = _pyplot()
    ok = [g for g in fit.groups if g.status == "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    budgets = sorted({g.d for g in ok})
    colour = _colours(budgets)
    ns = [g.n for g in fit.groups]
    grid_n = np.geomspace(min(ns) / 1.5, max(ns) * 3, 60) if ns else np.array([])
    panels = [(axes[0], "lr", fit.lr_law, "optimal peak LR"),
              (axes[1], "batch_tokens", fit.batch_law, "optimal batch (tokens)")]
    for ax, key, law, label in panels:
        for g in ok:
            value = getattr(g, key)
            if value is not None:
                ax.plot([g.n], [value], "s" if g.kind == "moe" else "o", color=colour[g.d],
                        mfc="none" if g.kind == "moe" else colour[g.d])
        if law is not None:
            for d in budgets:
                ax.plot(grid_n, [law.predict(n, d)[0] for n in grid_n], "-", color=colour[d], lw=1,
                        label=f"D={d:,.0f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"N ({fit.measure.replace('_', '-')} parameters; MoE: activated, squares)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    law = fit.loss_law
    for g in ok:
        if g.loss is None:
            continue
        x = g.n
        if g.kind == "moe" and law is not None and law.has_gamma:
            x = law.matching_dense(g.n, g.n_total)[0]
        ax.plot([x], [g.loss], "s" if g.kind == "moe" else "o", color=colour[g.d],
                mfc="none" if g.kind == "moe" else colour[g.d])
    if law is not None:
        for d in budgets:
            ax.plot(grid_n, [law.predict(n, d)[0] for n in grid_n], "-", color=colour[d], lw=1, label=f"D={d:,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("N (MoE squares at their matching dense size)")
    ax.set_ylabel("loss at the optimum (nats/token)")
    ax.grid(alpha=0.3, which="both")
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.suptitle("Fitted laws (lines) and group optima (points)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_predicted_vs_observed(fit: ScalingFit, out: Path, held_out: Sequence[Observed] = ()) -> None:
    """The loss law's prediction against each group's optimum loss, and held-out runs with their intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=110)
    law = fit.loss_law
    points = []
    if law is not None:
        for g in fit.groups:
            if g.status == "ok" and g.loss is not None and (g.kind == "dense" or law.has_gamma):
                predicted = law.predict(g.n, g.d, g.n_total if g.kind == "moe" else None)[0]
                points.append((predicted, g.loss))
                ax.plot([predicted], [g.loss], "s" if g.kind == "moe" else "o", color="tab:blue",
                        mfc="none" if g.kind == "moe" else "tab:blue", ms=5)
    for label, observed, (predicted, lo, hi) in held_out:
        ax.errorbar([predicted], [observed], xerr=[[predicted - lo], [hi - predicted]], fmt="D", color="tab:red",
                    ms=6, capsize=3)
        ax.annotate(label, (predicted, observed), fontsize=7, xytext=(4, 4), textcoords="offset points")
        points.append((predicted, observed))
    if points:
        lo, hi = min(min(p) for p in points), max(max(p) for p in points)
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlabel("predicted loss (law)")
    ax.set_ylabel("observed loss")
    ax.set_title("Predicted against observed\n(blue: fitted groups; red: held-out runs, 95% interval)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _ci(value: tuple[float, float, float], fmt: str = ".3g") -> str:
    v, lo, hi = value
    return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _law_text(law, name: str, symbol: str) -> list[str]:
    a = law.coef[0]
    lines = [f"- `log {symbol} = {a:.3f}"]
    for term, label in (("log_n", "log N"), ("log_d", "log D"), ("moe", "[MoE]")):
        if term in law.terms:
            lines[-1] += f" + ({law.exponent(term)[0]:.3f}) {label}"
    lines[-1] += f"`, fitted on {law.groups} group optima, residual sd {law.residual_sd:.3f} in log {symbol}"
    for term, label in (("log_n", "exponent of N"), ("log_d", "exponent of D"), ("moe", "MoE offset (log)")):
        if term in law.terms:
            lines.append(f"  - {label}: {_ci(law.exponent(term))}")
        elif term != "moe":
            lines.append(f"  - {label}: not estimated ({label[-1]} was not varied)")
    return [f"**{name}**", ""] + lines + [""]


def summary_markdown(fit: ScalingFit, records: Sequence[dict], images: dict[str, str], heading: str = "##") -> str:
    """The fitted laws with intervals, the MoE matching sizes, the per-group table and the plots."""
    measure = fit.measure.replace("_", "-")
    ok = [g for g in fit.groups if g.status == "ok"]
    lines = [f"{heading} Fit", "",
             f"{len(records)} runs in {len(fit.groups)} (shape, D) groups, {len(ok)} with an optimum inside their "
             f"grid. N counts {measure} parameters (activated ones for MoE), D training tokens, batch sizes are in "
             f"tokens (sequences of {fit.seq_len}). Intervals are 95% bootstrap intervals.", ""]
    if fit.lr_law:
        lines += _law_text(fit.lr_law, "Optimal peak learning rate", "mu_opt")
    else:
        lines += [f"**Optimal learning rate**: no law ({fit.notes.get('lr', '')})", ""]
    if fit.batch_law:
        lines += _law_text(fit.batch_law, "Optimal batch size", "B_opt")
    else:
        lines += [f"**Optimal batch size**: no law ({fit.notes.get('batch_tokens', '')})", ""]
    law = fit.loss_law
    if law:
        c = law.constants()
        lines += ["**Loss at the optimum**", "",
                  "`L(N, D) = E + A / N^alpha + B / D^beta`" + (", `N = N_act (N_total / N_act)^gamma` for MoE"
                                                                 if law.has_gamma else "") +
                  f", Huber loss (delta {law.delta:g}) on log L over {law.groups} group optima:", "",
                  "| constant | estimate [95% interval] |", "|---|---|"]
        lines += [f"| {k} | {_ci(v, '.4g')} |" for k, v in c.items()]
        lines.append("")
        moe = sorted({(g.model, g.n, g.n_total) for g in fit.groups if g.kind == "moe"})
        if moe and law.has_gamma:
            lines += ["| MoE shape | activated N | total N | matches dense N [95% interval] |", "|---|---|---|---|"]
            lines += [f"| {m} | {n:,.0f} | {t:,.0f} | {_ci(law.matching_dense(n, t), ',.0f')} |" for m, n, t in moe]
            lines.append("")
    else:
        lines += [f"**Loss law**: not fitted ({fit.notes.get('loss', '')})", ""]
    lines += ["| model | kind | N | N total | D | runs (diverged) | LR* | B* (tokens) | L* | best run: LR, B, L | "
              "status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in fit.groups:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        lines.append(f"| {g.model} | {g.kind} | {g.n:,.0f} | {g.n_total:,.0f} | {g.d:,.0f} | {g.runs} ({g.diverged}) "
                     f"| {fmt(g.lr, '.3g')} | {fmt(g.batch_tokens, ',.0f')} | {fmt(g.loss, '.4f')} | "
                     f"{g.best_lr:.3g}, {g.best_batch_tokens:,.0f}, {g.best_loss:.4f} | {g.status} |")
    lines.append("")
    for title, path in images.items():
        lines += [f"![{title}]({path})", ""]
    return "\n".join(lines)


def write_fit_report(fit: ScalingFit, records: Sequence[dict], out: Path, held_out: Sequence[Observed] = (),
                     doc: Path | None = None, heading: str = "##") -> str:
    """fit.json, the three PNGs and summary.md in `out`; returns the summary with image paths relative to `doc`
    (or to `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    fit.save(out / "fit.json")
    files = {"loss against learning rate": out / "loss_vs_lr.png", "fitted laws": out / "laws.png",
             "predicted against observed": out / "predicted_vs_observed.png"}
    plot_loss_vs_lr(records, fit, files["loss against learning rate"])
    plot_laws(fit, files["fitted laws"])
    plot_predicted_vs_observed(fit, files["predicted against observed"], held_out)
    base = (doc.parent if doc else out).resolve()
    images = {k: os.path.relpath(v.resolve(), base) for k, v in files.items()}
    text = summary_markdown(fit, records, images, heading)
    atomic_write_text(out / "summary.md", summary_markdown(fit, records, {k: v.name for k, v in files.items()},
                                                           heading) + "\n")
    return text


def replace_section(doc: Path, marker: str, text: str) -> None:
    """Put `text` between `<!-- marker:begin -->` and `<!-- marker:end -->` in `doc` (appended, with the markers,
    when they are not there yet); the rest of the document is left as it was."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    atomic_write_text(doc, new)


def fit_to_directory(results: str | Path, out: str | Path, doc: str | Path | None = None, section: str = "results",
                     measure: str = "non_embedding", huber_delta: float = 1e-3, replicates: int = 1000,
                     seed: int = 0) -> str:
    """`qwen25 scaling fit`: read a results file, fit, write fit.json + plots + summary.md to `out`, and with
    `doc` put the summary into that document between the `<section>-fit` markers. Returns the summary."""
    records = read_results(results)
    fit = fit_results(records, measure, huber_delta, replicates, seed, source=str(results))
    text = write_fit_report(fit, records, Path(out), doc=Path(doc) if doc else None)
    if doc:
        replace_section(Path(doc), f"{section}-fit", text)
    return text
