"""`make run`'s evaluation stage: the tiny model after each training stage on a few standard benchmarks
(the first items of each, each task's default shots), next to the held-out math score each stage already
measured; a markdown section and a bar plot for the run's report. Small on purpose (minutes on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qwen25.eval.harness import EvalSettings, run_eval

STAGE_TASKS = "arc_easy,hellaswag,mmlu,gsm8k,humaneval"
STAGE_LIMIT = 20  # items per task
STAGE_MAX_NEW_TOKENS = 48
HEADLINE = {"arc_easy": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "gsm8k": "exact_match",
            "humaneval": "pass@1"}


def evaluate_stages(models: dict[str, Path], out_dir: Path, tasks: str = STAGE_TASKS, limit: int = STAGE_LIMIT,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (stage, task): the task's headline metric for the model of that stage. Prompts are chat
    prompts for every stage after pretraining. Each stage's JSON and per-item records go to out_dir."""
    rows = []
    for n, (stage, directory) in enumerate(models.items()):
        settings = EvalSettings(model=str(directory), tasks=tasks, limit=limit, chat=n > 0,
                                out=str(Path(out_dir) / f"{stage}.json"), dtype="float32",
                                max_new_tokens=STAGE_MAX_NEW_TOKENS, timeout=5.0)
        results, _ = run_eval(settings, log=log)
        for r in results:
            if r.metric == HEADLINE.get(r.task):
                rows.append({"stage": stage, "task": r.task, "metric": r.metric, "value": r.value,
                             "stderr": r.stderr, "n": r.n, "seconds": r.seconds})
    return rows


def plot_stages(rows: list[dict], heldout: dict[str, float], out: Path) -> None:
    """Grouped bars: one group per task (held-out math first), one bar per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows)) or list(heldout)
    tasks = ["held-out math"] + list(dict.fromkeys(r["task"] for r in rows))
    value = {(r["stage"], r["task"]): r["value"] for r in rows}
    value.update({(stage, "held-out math"): v for stage, v in heldout.items()})
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    width = 0.8 / max(1, len(stages))
    for k, stage in enumerate(stages):
        xs = [i + k * width for i in range(len(tasks))]
        ax.bar(xs, [100 * value.get((stage, t), 0.0) for t in tasks], width, label=stage)
    ax.set_xticks([i + width * (len(stages) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("score (%)")
    ax.set_title("Tiny model after each stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def stages_section(rows: list[dict], heldout: dict[str, float], heldout_n: int, plot_name: str,
                   minutes: float) -> str:
    """The report's markdown section: a table (stage x task) and the plot."""
    stages = list(dict.fromkeys([*heldout, *(r["stage"] for r in rows)]))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["stage"], r["task"]): r for r in rows}
    first = {r["task"]: r for r in reversed(rows)}  # each task's metric and n, as its first row gives them
    head = ["stage", f"held-out math (n={heldout_n})"] + [f"{t} {first[t]['metric']} (n={first[t]['n']})"
                                                          for t in tasks]
    lines = ["## Evaluation", "",
             f"Scores after each stage: the held-out math problems and the first {rows[0]['n'] if rows else 0} "
             "items of standard benchmarks (each task's default shots; chat prompts after pretraining; "
             "`qwen25.eval`). A model this small is expected near chance on the standard sets; they show the "
             f"harness runs end to end on every stage's model. {minutes:.1f} min.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in stages:
        cells = [f"{100 * heldout[stage]:.1f}" if stage in heldout else "-"]
        cells += [f"{100 * cell[stage, t]['value']:.1f} ± {100 * cell[stage, t]['stderr']:.1f}"
                  if (stage, t) in cell else "-" for t in tasks]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", f"![scores after each stage]({plot_name})", ""]
    return "\n".join(lines)
