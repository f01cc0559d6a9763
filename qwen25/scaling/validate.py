"""`qwen25 scaling validate`: the held-out check of a sweep's fit, in one command.

It fits the sweep's results, then trains what the recipe's `[heldout]` section names, none of which the fit saw:
a dense shape larger than every fitted one, on more tokens than any fitted run, at the predicted LR and batch
and at `lr_factors` times that LR (the prediction should end inside its interval, and the other LRs should end
no better); and a MoE shape at its predicted LR and batch (inside its interval; the fit says which dense size it
matches). The runs are resumable like the sweep's (`heldout.jsonl` beside `results.jsonl`). The numbers go into
`<run_dir>/heldout.md` and, with `--doc`, into that document between markers, with the fit's summary and plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from qwen25.io import atomic_write_text
from qwen25.model import build_model
from qwen25.scaling.fit import ScalingFit, fit_results, sizes
from qwen25.scaling.predict import Prediction, predict
from qwen25.scaling.recipe import ModelEntry, RunSpec, ScalingRecipe, make_run, model_config
from qwen25.scaling.report import Observed, replace_section, write_fit_report
from qwen25.scaling.results import read_results
from qwen25.scaling.sweep import describe_params, run_specs
from qwen25.training.recipe import RecipeError


def _sizes(recipe: ScalingRecipe, entry: ModelEntry, measure: str) -> tuple[float, float]:
    cfg = model_config(entry, recipe.tokenizer.vocab_size, None, recipe.sweep.seq_len)
    return sizes(describe_params(build_model(cfg, device="meta")), measure)


def plan_heldout(recipe: ScalingRecipe, fit: ScalingFit) -> list[tuple[str, RunSpec, Prediction]]:
    """(label, run, prediction) for every held-out run; errors name the recipe key when the check is impossible
    (a dense shape not larger than the fit's, a law the fit lacks)."""
    held = recipe.heldout
    if held.dense is None and held.moe is None:
        raise RecipeError(f"{recipe.source}: heldout: names no dense or moe shape to validate")
    fitted = [g for g in fit.groups if g.status == "ok"]
    if not fitted:
        raise ValueError("no group of the sweep has an optimum inside its grid: nothing to validate")
    runs = []
    for key, entry in (("dense", held.dense), ("moe", held.moe)):
        if entry is None:
            continue
        n, n_total = _sizes(recipe, entry, fit.measure)
        d = entry.tokens[0]
        if key == "dense":
            n_max, d_max = max(g.n for g in fitted), max(g.d for g in fitted)
            if n <= n_max or d <= d_max:
                raise RecipeError(f"{recipe.source}: heldout.dense must be larger than every fitted group in N and D "
                                  f"(it has N {n:,.0f}, D {d:,}; the fit reaches N {n_max:,.0f}, D {d_max:,.0f})")
        if any(g.model == entry.name for g in fit.groups):
            raise RecipeError(f"{recipe.source}: heldout.{key}.name {entry.name!r} is a shape of the sweep; "
                              "a held-out check needs one the fit has not seen")
        p = predict(fit, n, d, n_total if key == "moe" else None)
        missing = [what for what, v in (("LR", p.lr), ("loss", p.loss)) if v is None]
        if missing:
            raise ValueError(f"the fit cannot predict {', '.join(missing)} for heldout.{key}: " + "; ".join(p.notes))
        batch = p.batch_sequences
        if batch is None:  # too few groups located a batch optimum: check the LR and loss at the sweep's batch
            batch = sorted(recipe.sweep.batches)[len(recipe.sweep.batches) // 2]
            p.notes.append(f"no batch law, so heldout.{key} trains at the sweep's batch ({batch} sequences), not a "
                           "predicted one")
        runs.append((f"{entry.name} at the predicted LR", make_run(recipe, entry, d, p.lr[0], batch), p))
        if key == "dense":
            for factor in held.lr_factors:
                runs.append((f"{entry.name} at {factor:g} x LR", make_run(recipe, entry, d, p.lr[0] * factor, batch),
                             p))
    return runs


def heldout_markdown(rows: list[tuple[str, RunSpec, Prediction, dict]], measure: str, heading: str = "##") -> str:
    lines = [f"{heading} Held-out check", "",
             "Runs the fit never saw, trained at the LR and batch it predicts (and the dense one at other LRs "
             "too); the loss interval is where a new run's final loss should fall (95%).", "",
             "| run | N (activated / total) | D | LR | batch (seqs) | predicted loss [95%] | observed | inside |",
             "|---|---|---|---|---|---|---|---|"]
    centre: dict[str, float] = {}
    for label, spec, p, record in rows:
        loss, lo, hi = p.loss
        observed = record["final_loss"]
        inside = observed is not None and lo <= observed <= hi
        at_prediction = label.endswith("predicted LR")
        if at_prediction and observed is not None:
            centre[spec.model.name] = observed
        size = f"{p.n:,.0f}" + (f" / {p.n_total:,.0f}" if p.n_total else "")
        shown = "diverged" if observed is None else f"{observed:.4f}"
        lines.append(f"| {label} | {size} | {spec.tokens:,} | {spec.lr:.3g} | {spec.batch} | {loss:.4f} "
                     f"[{lo:.4f}, {hi:.4f}] | {shown} | {('yes' if inside else 'no') if at_prediction else '-'} |")
    lines.append("")
    for label, spec, p, record in rows:
        if label.endswith("predicted LR") or spec.model.name not in centre:
            continue
        observed = record["final_loss"]
        better = observed is not None and observed < centre[spec.model.name]
        lines.append(f"- {label}: {'diverged' if observed is None else f'{observed:.4f}'} against "
                     f"{centre[spec.model.name]:.4f} at the predicted LR: {'better' if better else 'no better'}.")
    for label, spec, p, record in rows:
        if p.matching_dense:
            v, lo, hi = p.matching_dense
            lines.append(f"- {spec.model.name} ({p.n:,.0f} activated of {p.n_total:,.0f} {measure} parameters) "
                         f"matches a dense model of {v:,.0f} parameters (95% interval {lo:,.0f} .. {hi:,.0f}).")
    lines += [f"- note: {n}" for n in sorted({n for _, _, p, _ in rows for n in p.notes})]
    return "\n".join(lines)


def run_validation(recipe: ScalingRecipe, doc: Path | None = None, section: str = "results",
                   measure: str = "non_embedding", replicates: int = 1000, threads: int = 0,
                   log: Callable[[str], None] = print) -> str:
    """Fit, train the held-out runs, and write the numbers (see the module docstring). Returns the markdown."""
    if threads:
        torch.set_num_threads(threads)
    doc = Path(doc) if doc else None
    results = recipe.directory / "results.jsonl"
    records = read_results(results)
    fit = fit_results(records, measure, replicates=replicates, source=str(results))
    planned = plan_heldout(recipe, fit)
    heldout = recipe.directory / "heldout.jsonl"
    run_specs(recipe, [spec for _, spec, _ in planned], heldout, log)
    by_id = {r["id"]: r for r in read_results(heldout)}
    rows = [(label, spec, p, by_id[spec.id]) for label, spec, p in planned if spec.id in by_id]
    if len(rows) < len(planned):
        raise RuntimeError("some held-out runs are still being trained by another process: run validate again "
                           "when they finish")
    table = heldout_markdown(rows, fit.measure.replace("_", "-"))
    observed: list[Observed] = [(spec.model.name, record["final_loss"], p.loss) for label, spec, p, record in rows
                                if label.endswith("predicted LR") and record["final_loss"] is not None]
    out = doc.parent / doc.stem / section if doc else recipe.directory / "fit"
    summary = write_fit_report(fit, records, out, observed, doc)
    atomic_write_text(recipe.directory / "heldout.md", table + "\n")
    atomic_write_text(recipe.directory / "heldout.json", json.dumps(
        [{"label": label, "id": spec.id, "lr": spec.lr, "batch": spec.batch, "tokens": spec.tokens,
          "predicted_loss": p.loss, "observed_loss": record["final_loss"], "matching_dense": p.matching_dense}
         for label, spec, p, record in rows], indent=2) + "\n")
    if doc:
        replace_section(doc, f"{section}-fit", summary)
        replace_section(doc, f"{section}-heldout", table)
        log(f"wrote the fit and the held-out check into {doc} (plots in {out})")
    return table
