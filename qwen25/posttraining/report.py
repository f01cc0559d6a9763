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


def _axes(n: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), dpi=110)
    fig.suptitle(title)
    return plt, fig, axes


def plot_dpo(metrics: list[dict], out: Path) -> None:
    """DPO loss (train and held out) and reward accuracy / margin per step."""
    plt, fig, (left, right) = _axes(2, "DPO with the Online Merging Optimizer")
    train = [m for m in metrics if "loss" in m and "eval_loss" not in m]
    evals = [m for m in metrics if "eval_loss" in m]
    left.plot([m["step"] for m in train], [m["loss"] for m in train], lw=0.8, label="train")
    left.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o-", ms=3.5, label="held-out pairs")
    left.set_xlabel("optimizer step")
    left.set_ylabel("DPO loss")
    left.legend()
    right.plot([m["step"] for m in evals], [m["eval_rewards/accuracies"] for m in evals], "o-", ms=3.5,
               label="reward accuracy (held out)")
    right.plot([m["step"] for m in evals], [m["eval_rewards/margins"] for m in evals], "s-", ms=3.5,
               label="reward margin (held out)")
    right.set_xlabel("optimizer step")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_grpo(metrics: list[dict], out: Path) -> None:
    """Reward (rollout pass rate) and held-out accuracy, KL to the reference, and the zero-variance share."""
    plt, fig, (reward, kl, zero) = _axes(3, "GRPO")
    rollouts = [m for m in metrics if m.get("event") == "rollout"]
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_pass_rate" in m]
    reward.plot([m["step"] for m in rollouts], [m["reward_mean"] for m in rollouts], lw=0.8, alpha=0.7,
                label="reward of the rollouts")
    reward.plot([m["step"] for m in evals], [m["eval_pass_rate"] for m in evals], "o-", ms=3.5,
                label="held-out accuracy (greedy)")
    reward.set_ylabel("share correct")
    reward.legend()
    kl.plot([m["step"] for m in train if "kl" in m], [m["kl"] for m in train if "kl" in m], lw=0.8)
    kl.set_ylabel("KL to the reference (k3, per token)")
    zero.plot([m["step"] for m in rollouts], [m["zero_variance_share"] for m in rollouts], lw=0.8)
    zero.set_ylabel("share of groups with equal rewards")
    for ax in (reward, kl, zero):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def alignment_section(counts: dict, scores: dict[str, dict[str, float]], sizes: dict[str, int], rm_eval: dict,
                      dpo, grpo, dpo_metrics: list[dict], grpo_metrics: list[dict], minutes: dict[str, float]) -> str:
    """Preference data, DPO, reward model and GRPO sections, and the accuracy table after every stage."""
    opt = dpo.optimizer
    dpo_steps = max((m["step"] for m in dpo_metrics if "loss" in m), default=0)
    dpo_evals = [m for m in dpo_metrics if "eval_loss" in m]
    rollouts = [m for m in grpo_metrics if m.get("event") == "rollout"]
    zero = sum(m["zero_variance_share"] * m["groups"] for m in rollouts)
    groups = sum(m["groups"] for m in rollouts)
    r = grpo.rollout
    lines = ["## Preference data", "",
             f"The verifiers pipeline (`qwen25/data/curation.py`): the SFT model sampled {counts['pair_samples']} "
             f"responses (temperature 1) to each of {counts['pair_queries']} math queries (word problems and "
             "two-digit arithmetic, none seen in SFT), the math verifier judged each, and a passing and a failing "
             f"response of the same query make a pair: {counts['dpo_sampled'] + counts['rm_held_sampled']} sampled "
             f"pairs ({counts['rm_held_sampled']} kept for held-out reward-model accuracy). The tiny model does not "
             f"produce both kinds for enough queries, so {counts['dpo_corrupted']} pairs of the worked correct answer "
             "against the same working with a corrupted result fill the DPO set.", "", counts["curation"].strip(), "",
             "## DPO with the Online Merging Optimizer", "",
             f"{dpo_steps} optimizer steps ({minutes.get('DPO', 0):.1f} min), one epoch of "
             f"{counts['dpo_sampled'] + counts['dpo_corrupted']} pairs, beta {dpo.beta}, learning rate {dpo.lr:g}, "
             f"{opt.kind} with reserve rate {opt.reserve} and alpha {opt.alpha:g} (the release settings): every "
             "AdamW update keeps 1% of its entries (rescaled by 100) and adds alpha x the SFT task vector "
             "(SFT minus pretrained weights). Reference log-probs computed once and cached.", "",
             "![DPO](dpo.png)", ""]
    if dpo_evals:
        first, last = dpo_evals[0], dpo_evals[-1]
        lines += [f"Held-out pairs: loss {first['eval_loss']:.4f} -> {last['eval_loss']:.4f}, reward accuracy "
                  f"{100 * first['eval_rewards/accuracies']:.1f}% -> {100 * last['eval_rewards/accuracies']:.1f}%, "
                  f"margin {first['eval_rewards/margins']:.4f} -> {last['eval_rewards/margins']:.4f}.", ""]
    lines += ["## Reward model", "",
              f"The SFT model's decoder with a scalar head, Bradley-Terry loss on {counts['rm_train']} pairs "
              f"({minutes.get('reward model', 0):.1f} min); saved as a transformers Qwen2ForSequenceClassification. "
              f"Pairwise accuracy on {counts['rm_heldout']} held-out pairs:", "",
              "| category | held-out pairs | accuracy |", "|---|---|---|"]
    for cat, v in rm_eval.items():
        if isinstance(v, dict):
            lines.append(f"| {cat} | {v['pairs']} | {100 * v['accuracy']:.1f}% |")
    lines += ["", "## GRPO", "",
              f"{grpo.steps} optimizer steps ({minutes.get('GRPO', 0):.1f} min) from the DPO model with rule rewards "
              f"(the math verifier: 1 for a right final answer, else 0) on {counts['grpo_queries']} questions "
              f"\"Which is the largest of 47, 82 and 63?\" (SFT taught the two-number question only); {r.queries_per_step} queries x {r.group_size} responses per step "
              f"(temperature {r.temperature:g}, up to {r.max_new_tokens} tokens), {grpo.aggregation} aggregation, "
              f"clip {grpo.clip_low}, beta {grpo.beta} (k3 KL), learning rate {grpo.lr:g}. Queries go in order of the "
              f"variance of {grpo.order.samples} sampled rewards, re-scored every {grpo.order.refresh_every} steps. "
              f"Groups whose {r.group_size} rewards were all equal: {zero:.0f} of {groups} "
              f"({100 * zero / max(groups, 1):.1f}%).", "", "![GRPO](grpo.png)", "",
              "## Held-out exact-answer accuracy after each stage", "",
              "Greedy replies, last integer of the reply against the answer; "
              + ", ".join(f"{name}: {n} problems" for name, n in sizes.items())
              + " (the GRPO task: held-out largest-of-three questions no stage trained on; math: SFT's held-out mix).", "",
              "| after | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for stage, acc in scores.items():
        lines.append(f"| {stage} | " + " | ".join(f"{100 * acc[name]:.1f}%" for name in sizes) + " |")
    lines += ["", f"Alignment data {minutes['data']:.1f} min; DPO, reward model and GRPO as above."]
    return "\n".join(lines) + "\n"
