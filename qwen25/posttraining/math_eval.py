"""Exact-answer accuracy on held-out math problems: the chat-formatted question, a greedy reply, the last
integer in the reply compared with the reference. The score `make run` reports before and after each
post-training stage."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from qwen25.generation import SamplingParams, generate
from qwen25.tokenizer import QwenTokenizer

_INTEGER = re.compile(r"-?\d+")


def last_integer(text: str) -> int | None:
    found = _INTEGER.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


def chat_prompt(tok: QwenTokenizer, question: str) -> list[int]:
    ids, _ = tok.encode_chat([{"role": "user", "content": question}], add_generation_prompt=True)
    return ids


@torch.inference_mode()
def math_accuracy(model: torch.nn.Module, tok: QwenTokenizer, problems: Sequence[dict], batch: int = 50,
                  max_new_tokens: int = 40) -> tuple[float, list[dict]]:
    """(accuracy, per-problem records) over `problems` ({"question", "answer"}), greedy."""
    model.eval()
    stop = [tok.control_ids["<|im_end|>"], tok.endoftext_id]
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=stop)
    records = []
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        outputs = generate(model, [chat_prompt(tok, p["question"]) for p in chunk], params)
        for p, ids in zip(chunk, outputs):
            reply = tok.decode([i for i in ids if i not in stop])
            got = last_integer(reply)
            records.append({"question": p["question"], "answer": p["answer"], "reply": reply,
                            "correct": got == p["answer"]})
    return sum(r["correct"] for r in records) / max(len(records), 1), records
