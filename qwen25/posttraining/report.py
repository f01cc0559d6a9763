"""The post-training sections of the run report: loss curves as PNGs, held-out loss and accuracy before and
after each stage, and samples with the chat template."""

from __future__ import annotations

from pathlib import Path


def plot_phases(metrics: list[dict], out: Path, title: str, ylabel: str = "loss (nats/assistant token)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m and "eval_loss" not in m]
    evals = [m for m in metrics if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], lw=0.8, alpha=0.6, label="train")
    if evals:
        ax.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o-", ms=3.5, label="held-out")
    for m in metrics:
        if m.get("event") == "phase_start":
            ax.axvline(m["step"], color="gray", ls="--", lw=0.8)
            ax.text(m["step"], ax.get_ylim()[1], f" {m['phase_name']}", va="top", ha="left", fontsize=8,
                    color="dimgray")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def one_line(text: str, limit: int = 240) -> str:
    return text.replace("\n", "\\n").replace("`", "'")[:limit]


def sft_section(metrics: list[dict], plot: str, data_counts: dict, stats: dict, accuracy: dict,
                samples: list[dict], minutes: float) -> str:
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    steps = max((m["step"] for m in metrics if "loss" in m), default=0)
    lines = ["## Supervised fine-tuning", "",
             f"{steps} optimizer steps in {minutes:.1f} min on conversations built from the project's offline "
             "material (no evaluation data); loss on assistant tokens only, conversations packed into 1,024-token "
             "rows with document masking.", "", f"![SFT loss]({plot})", ""]
    if evals:
        drop = 100 * (evals[0] - evals[-1]) / evals[0]
        lines += [f"Held-out assistant-token loss {evals[0]:.3f} -> {evals[-1]:.3f} nats/token ({drop:.1f}% lower).", ""]
    lines += [f"Held-out math exact-answer accuracy ({accuracy['n']} problems, greedy, last integer of the reply): "
              f"{100 * accuracy['before']:.1f}% before SFT -> {100 * accuracy['after']:.1f}% after.", "",
              "| family | train conversations | held-out |", "|---|---|---|"]
    for family, n in sorted(data_counts["families"].items()):
        lines.append(f"| {family} | {n['train']} | {n['heldout']} |")
    for phase, s in stats.items():
        dropped = ", ".join(f"{v} {k}" for k, v in s["dropped"].items()) or "none"
        lines.append("")
        lines.append(f"Phase `{phase}`: {s['kept']} conversations, {s['tokens']:,} tokens, "
                     f"{s['target_tokens']:,} assistant targets; truncated {s['truncated']}, dropped: {dropped}.")
    lines += ["", "Samples (greedy, chat template):", ""]
    for s in samples:
        lines += [f"**User** `{one_line(s['prompt'])}`", "", f"- before SFT: `{one_line(s['before'])}`",
                  f"- after SFT: `{one_line(s['after'])}`", ""]
    return "\n".join(lines) + "\n"
