"""The data section of a run report: documents in and out per step with reasons, the student's agreement with
the teacher and its speed, the topic mixture before and after rebalancing, and examples of removed documents."""

from __future__ import annotations


def _one_line(text: str, n: int = 160) -> str:
    text = text.replace("\n", "\\n").replace("`", "'").replace("|", "/")
    return text[:n] + ("..." if len(text) > n else "")


def _mixture_table(mixture: dict) -> list[str]:
    before, after = mixture["before"], mixture["after"] or mixture["before"]
    target, rates = mixture.get("target", {}), mixture.get("rates", {})
    total_b = sum(c["bytes"] for c in before.values()) or 1
    total_a = sum(c["bytes"] for c in after.values()) or 1
    lines = ["| topic | docs before | MB before | share before | rate | docs after | MB after | share after | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    target_total = sum(target.values()) or 1
    for topic in sorted(set(before) | set(after), key=lambda t: -before.get(t, {"bytes": 0})["bytes"]):
        b, a = before.get(topic, {"docs": 0, "bytes": 0}), after.get(topic, {"docs": 0, "bytes": 0})
        goal = f"{100 * target[topic] / target_total:.0f}% of targeted" if topic in target else "-"
        lines.append(f"| {topic} | {b['docs']} | {b['bytes'] / 1e6:.2f} | {100 * b['bytes'] / total_b:.1f}% | "
                     f"{rates.get(topic, 1.0):.2f} | {a['docs']} | {a['bytes'] / 1e6:.2f} | "
                     f"{100 * a['bytes'] / total_a:.1f}% | {goal} |")
    return lines


def data_section(summary: dict) -> str:
    lines = ["## Data pipeline", "",
             "Heuristic filters, exact and MinHash near-duplicate removal, the quality/topic student distilled from "
             "the instruct model's labels, and topic rebalancing (`qwen25/data/pipeline/`, docs/data.md), run as "
             "datatrove stages.", "",
             "| step | docs in | removed | docs out | reasons |", "|---|---|---|---|---|"]
    for step in summary["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(step["reasons"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"| {step['step']} | {step['in']} | {step['removed']} | {step['out']} | {reasons} |")
    out = summary["output_docs"]
    lines += ["", f"Out: {out['train']} training and {out['heldout']} held-out documents (held-out split by content "
                  "hash; rebalancing applies to training documents only)."]
    if "timings_s" in summary:
        lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items()) + "."]
    student = summary.get("student")
    if student:
        h = student["heldout"]
        speed = (f"; {1e3 * student['student_seconds_per_doc']:.2f} ms per document vs the teacher's "
                 f"{student['teacher_seconds_per_doc']:.1f} s ({student['speedup']:,.0f}x)"
                 if student.get("speedup") else f"; {1e3 * student['student_seconds_per_doc']:.2f} ms per document")
        lines += ["", "### Quality and topic student", "",
                  f"Distilled from {student['train_docs']} teacher-labelled documents ({student['labels']}); on "
                  f"{h['docs']} held-out labelled documents it agrees with the teacher's keep/drop decision on "
                  f"{100 * h['keep_agreement']:.0f}% (always answering the majority: {100 * h['keep_chance']:.0f}%), "
                  f"its combined score correlates at r = {h['score_pearson']:.2f}, and its topic matches on "
                  f"{100 * h['topic_agreement']:.0f}% (majority topic: {100 * h['topic_chance']:.0f}%){speed}."]
    mixture = summary.get("mixture")
    if mixture:
        lines += ["", "### Topic mixture of the training documents (bytes)", ""] + _mixture_table(mixture)
    examples = [(s["step"], e) for s in summary["steps"] for e in s["examples"]]
    if examples:
        lines += ["", "### Examples of removed documents", "", "| step | reason | source | text |", "|---|---|---|---|"]
        lines += [f"| {step} | {e['reason']} | {e['source']} | `{_one_line(e['text'])}` |" for step, e in examples]
    return "\n".join(lines) + "\n"
