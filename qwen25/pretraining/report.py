"""`runs/<name>/report.md` and `loss.png`: what was trained, how fast, how well, and what it writes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from qwen25.io import atomic_write_text
from qwen25.model import count_parameters


def plot_losses(metrics: list[dict], stage_names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    starts = [m for m in metrics if m.get("event") == "phase_start"]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], lw=0.8, alpha=0.6, label="train loss")
    ax.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o-", ms=3.5, label="held-out loss")
    for m in starts:
        ax.axvline(m["step"], color="gray", ls="--", lw=0.8)
        ax.text(m["step"], ax.get_ylim()[1], f" {stage_names[m['phase']]}: seq {m['seq_len']}, "
                f"RoPE base {m['rope_theta']:g}", va="top", ha="left", fontsize=8, color="dimgray")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("pretraining loss (dashed lines: stage boundaries)")
    ax.legend(loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(recipe, trainer, metrics: list[dict], samples: dict, compression: dict, timings: dict,
                 corpus_manifest: dict) -> Path:
    out_dir = recipe.directory
    plot_losses(metrics, [s.name for s in recipe.stages], out_dir / "loss.png")
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    total, non_embedding = count_parameters(trainer.inner)
    first, last = evals[0], evals[-1]
    lines = [f"# Pretraining report: {recipe.name}", ""]
    lines += [f"Recipe `{recipe.source}`; {total:,} parameters ({non_embedding:,} non-embedding); "
              f"{train[-1]['tokens'] if train else 0:,} training tokens in {len(train)} steps; "
              f"wall time {timings.get('total', 0) / 60:.1f} min (data {timings.get('data', 0):.0f} s, "
              f"training {timings.get('train', 0):.0f} s).", "", "![loss](loss.png)", ""]
    drop = 100 * (first["eval_loss"] - last["eval_loss"]) / first["eval_loss"]
    lines += ["## Held-out evaluation", "",
              f"Held-out loss {first['eval_loss']:.3f} -> {last['eval_loss']:.3f} nats/token "
              f"({drop:.1f}% lower); bits per byte {first['eval_bpb']:.3f} -> {last['eval_bpb']:.3f}.", "",
              "| stage | seq len | RoPE base | steps | tokens | held-out loss at end | bits/byte | by domain (bits/byte) |",
              "|---|---|---|---|---|---|---|---|"]
    for i, stage in enumerate(recipe.stages):
        stage_evals = [m for m in evals if m["phase"] == i]
        if not stage_evals:
            continue
        end = stage_evals[-1]
        domains = ", ".join(f"{d} {v:.2f}" for d, v in sorted(end["eval_bpb_by_domain"].items()))
        lines.append(f"| {stage.name} | {stage.seq_len} | {stage.rope_theta:g} | {stage.steps} | {stage.tokens:,} | "
                     f"{end['eval_loss']:.3f} | {end['eval_bpb']:.3f} | {domains} |")
    if train:
        tps = [m["tokens_per_s"] for m in train[len(train) // 10:]]  # skip warm-up steps
        mfu = [m["mfu"] for m in train[len(train) // 10:]]
        lines += ["", "## Throughput", "",
                  f"Median {statistics.median(tps):,.0f} tokens/s, MFU {100 * statistics.median(mfu):.1f}% of the "
                  f"measured matmul peak ({trainer.trainer.peak_flops / 1e9:.0f} GFLOP/s, {recipe.train.dtype}), peak memory "
                  f"{max(m['memory_mb'] for m in train):,.0f} MB, {trainer.info.world} process(es) on "
                  f"{trainer.info.device.type}."]
    lines += ["", "## Tokenizer", "",
              "Bytes per token on the held-out split: " + ", ".join(f"{k} {v:.2f}" for k, v in compression.items()) + "."]
    lines += ["", "## Samples", "", "Sampled at temperature 0.8, top-k 40, from the trained model and, for "
              "comparison, from the same model before training.", ""]
    for trained, untrained in zip(samples["trained"], samples["untrained"]):
        lines += [f"**Prompt** `{_one_line(trained['prompt'])}`", "",
                  f"- trained: `{_one_line(trained['completion'])}`",
                  f"- untrained: `{_one_line(untrained['completion'])}`", ""]
    lines += ["## Corpus", "", "| source | domain | docs | MB | license |", "|---|---|---|---|---|"]
    for src in corpus_manifest["sources"]:
        if src["docs"]:
            lines.append(f"| {src['name']} | {src['domain']} | {src['docs']} | {src['bytes'] / 1e6:.2f} | {src['license']} |")
    lines += ["", "## Settings", "", "```json", json.dumps(recipe.to_dict(), indent=2), "```", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("`", "'")[:300]
