"""The response filter of report §4.1: a critic model and several scorers must all rate a response top before
it is kept. Scorers, each with its own threshold for "top":
- critic: the critic model rates the response 1-10 (`Rating: N`), `samples` times with different seeds; the
  lowest rating counts (every judgement must be top);
- fluency: the critic model's mean log p per token of the response as a reply to the prompt;
- verifier: a response that a verifier judged (its provenance has a verdict) must have passed;
- repetition: share of repeated word 3-grams;
- language: the response is in the language of the request (when both can be told).
A response is kept only when every scorer rates it top; each rejection records every scorer that did not.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwen25.data.curation import query_seed
from qwen25.data.generators import ModelGenerator
from qwen25.io import atomic_write_text, iter_jsonl_lines
from qwen25.verify.instructions import detect_language

PROMPT = ("Rate the assistant's response to the user's request on a scale of 1 to 10 for correctness, "
          "helpfulness and clarity (10: flawless).\n\n[Request]\n{request}\n\n[Response]\n{response}\n\n"
          "Explain briefly, then end with a line of the form \"Rating: N\".")
SCORERS = ("critic", "fluency", "verifier", "repetition", "language")


@dataclass
class CriticConfig:
    top_rating: int = 9  # ratings at or above are top
    samples: int = 1  # critic judgements per response
    min_mean_logprob: float = -2.0
    max_repeated_trigrams: float = 0.2


def parse_rating(text: str) -> int | None:
    """The last `Rating: N` (1-10) in a critic's reply; None when there is none."""
    found = re.findall(r"rating\s*[:：]\s*\**\s*(\d{1,2})\b", text, flags=re.IGNORECASE)
    ratings = [int(x) for x in found if 1 <= int(x) <= 10]
    return ratings[-1] if ratings else None


def repeated_trigrams(text: str) -> float:
    words = re.findall(r"\w+", text.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def _request(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")


def judge(records: Sequence[dict], critic: ModelGenerator, seed: int = 0,
          cfg: CriticConfig = CriticConfig()) -> list[dict]:
    """Every scorer's score and verdict for each SFT record ({"messages": [..., assistant], "provenance"})."""
    prompts = [r["messages"][:-1] for r in records]
    responses = [r["messages"][-1]["content"] for r in records]
    seeds = [query_seed(seed, f"critic-{i}") for i in range(len(records))]
    replies = critic([[{"role": "user", "content": PROMPT.format(request=_request(p), response=resp)}]
                      for p, resp in zip(prompts, responses)], cfg.samples, seeds)
    fluency = critic.mean_logprob(prompts, responses)
    out = []
    for record, prompt, response, reply, logprob, s in zip(records, prompts, responses, replies, fluency, seeds):
        ratings = [parse_rating(text) for text in reply]
        verdict = (record.get("provenance") or {}).get("verdict")
        wanted, found = detect_language(_request(prompt)), detect_language(response)
        scores = {
            "critic": {"ratings": ratings, "top": all(r is not None and r >= cfg.top_rating for r in ratings)},
            "fluency": {"mean_logprob": logprob, "top": logprob >= cfg.min_mean_logprob},
            "verifier": {"passed": None if verdict is None else verdict["passed"],
                         "top": verdict is None or bool(verdict["passed"])},
            "repetition": {"repeated_trigrams": repeated_trigrams(response),
                           "top": repeated_trigrams(response) <= cfg.max_repeated_trigrams},
            "language": {"request": wanted, "response": found, "top": None in (wanted, found) or found == wanted},
        }
        out.append({"seed": s, "critic_replies": reply, "scores": scores,
                    "kept": all(v["top"] for v in scores.values())})
    return out


def critic_filter(in_path: str | Path, critic: ModelGenerator, out_path: str | Path, seed: int = 0,
                  cfg: CriticConfig = CriticConfig()) -> str:
    """Keep the SFT records of `in_path` that every scorer rates top; write them (provenance extended with the
    scores) to `out_path`, and every judgement next to it (`<out>.judged.jsonl`). Returns a summary line."""
    records = []
    for line_no, obj in iter_jsonl_lines(in_path):
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not (isinstance(messages, list) and len(messages) >= 2 and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "assistant"):
            raise ValueError(f"{in_path}:{line_no}: expected an SFT record whose last message is the assistant's")
        records.append(obj)
    if not records:
        raise ValueError(f"{in_path}: no records")
    judged = judge(records, critic, seed, cfg)
    kept = [{**r, "provenance": {**(r.get("provenance") or {}), "critic": {"model": critic.name, **j}}}
            for r, j in zip(records, judged) if j["kept"]]
    out_path = Path(out_path)
    atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    atomic_write_text(out_path.with_name(out_path.name + ".judged.jsonl"),
                      "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
    rejected = Counter(name for j in judged for name, v in j["scores"].items() if not v["top"])
    return (f"critic filter: {len(records)} records, {len(kept)} kept -> {out_path}; not top by scorer: "
            + (", ".join(f"{n}: {rejected[n]}" for n in SCORERS if rejected[n]) or "none"))
