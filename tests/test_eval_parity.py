"""Multiple-choice scores of the real Qwen2.5-Coder-0.5B-Instruct agree with transformers on the same weights.

transformers (AutoModelForCausalLM on the fetched HF directory) scores every choice of the same items; the
predicted choice (acc and lm-eval's acc_norm) must be the same per item. By default both sides score, in fp32,
the first QWEN25_PARITY_ITEMS (8) items of each task here. With QWEN25_EVAL_RECORDS=RESULTS.items.jsonl the
qwen25 side is the per-item records of a bf16 `qwen25 eval run` (the docs/eval.md run; all of them, or the first
QWEN25_PARITY_ITEMS), transformers runs in bf16 too, and a differing choice passes only as a near-tie (the
other library's two log-likelihoods within NEAR_TIE nats), which is listed.
Skipped when the real model has not been fetched (`qwen25 models fetch qwen2.5-coder-0.5b-instruct`).
"""

import json
import os
from pathlib import Path

import pytest
import torch

from qwen25.eval.harness import choice_requests
from qwen25.eval.metrics import argmax
from qwen25.eval.tasks import TaskSpec, build_task
from qwen25.inference.hub import is_cached, model_dir

REAL = "qwen2.5-coder-0.5b-instruct"
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu")
pytestmark = [pytest.mark.slow, pytest.mark.heavy,
              pytest.mark.skipif(not is_cached(REAL), reason=f"{REAL} not fetched (qwen25 models fetch {REAL})")]


@torch.inference_mode()
def transformers_loglikelihoods(hf_model, requests) -> list[list[float]]:
    """Per request: prefill the context once with transformers' cache, repeat the cache per continuation
    (DynamicCache.batch_repeat_interleave), then score the continuations; logits from transformers' own head."""
    from transformers import DynamicCache

    out = []
    for r in requests:
        cache = DynamicCache(config=hf_model.config)
        first = hf_model(torch.tensor([r.context]), past_key_values=cache, use_cache=True).logits[0, -1]
        first = torch.log_softmax(first.float(), -1)
        lls = [float(first[c[0]]) for c in r.continuations]
        longest = max(len(c) for c in r.continuations)
        if longest > 1:
            cache.batch_repeat_interleave(len(r.continuations))
            ids = torch.zeros((len(r.continuations), longest - 1), dtype=torch.long)
            for n, c in enumerate(r.continuations):
                ids[n, :len(c) - 1] = torch.tensor(c[:-1])
            mask = torch.ones((len(r.continuations), len(r.context) + longest - 1), dtype=torch.long)
            logits = hf_model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
            lp = torch.log_softmax(logits.float(), -1)
            for n, c in enumerate(r.continuations):
                lls[n] += sum(float(lp[n, t, tok]) for t, tok in enumerate(c[1:]))
        out.append(lls)
    return out


def _our_records(task_name, items, model, tokenizer):
    path = os.environ.get("QWEN25_EVAL_RECORDS")
    if path:
        by_id = {r["id"]: r for r in map(json.loads, Path(path).read_text().splitlines()) if r["task"] == task_name}
        if not by_id:
            pytest.skip(f"{path} has no records of {task_name}")
        cap = int(os.environ.get("QWEN25_PARITY_ITEMS", len(by_id)))
        return [by_id[item.id] for item in items[:min(cap, len(by_id))]]
    from qwen25.eval.harness import run_choice_task
    from qwen25.eval.tasks import Task

    from qwen25.inference.engine import Engine

    _, records = run_choice_task(Engine(model), tokenizer, Task(task_name, "choice", items, {}), batch_tokens=256)
    return records


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    from qwen25.loading import load_model
    from qwen25.tokenizer import load_tokenizer

    directory = model_dir(REAL)
    # Scored here, both sides run in fp32, where the choices must agree exactly; a records file comes from a
    # bf16 run, so transformers runs in bf16 too and near-ties may flip (see NEAR_TIE).
    records = os.environ.get("QWEN25_EVAL_RECORDS")
    ours = None if records else load_model(directory, dtype="float32").eval()
    theirs = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16 if records else torch.float32).eval()
    return ours, theirs, load_tokenizer(directory)


NEAR_TIE = 0.1  # nats: bf16 rounding moves a log-likelihood by up to ~0.05 between two implementations


def _margin(values: list[float], a: int, b: int) -> float:
    return abs(values[a] - values[b])


@pytest.mark.parametrize("task_name", TASKS)
def test_per_item_choices_match_transformers(models, task_name):
    ours, theirs, tokenizer = models
    limit = int(os.environ.get("QWEN25_PARITY_ITEMS", "8"))
    items = build_task(TaskSpec(task_name, limit=None if os.environ.get("QWEN25_EVAL_RECORDS") else limit)).items
    records = _our_records(task_name, items, ours, tokenizer)
    items = items[:len(records)]
    requests, where = choice_requests(items, tokenizer, theirs.config.max_position_embeddings)
    hf = transformers_loglikelihoods(theirs, requests)
    tolerance = NEAR_TIE if os.environ.get("QWEN25_EVAL_RECORDS") else 0.0
    mismatches, near_ties = [], []
    for item, slots, record in zip(items, where, records):
        lls = [hf[r][j] for r, j in slots]
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, item.choices)]
        for mine, theirs_values in ((record["pred"], lls), (record["pred_norm"], norm)):
            if mine != argmax(theirs_values):
                tie = _margin(theirs_values, mine, argmax(theirs_values)) < tolerance
                (near_ties if tie else mismatches).append((item.id, record["loglikelihoods"], lls))
        diff = max(abs(a - b) for a, b in zip(record["loglikelihoods"], lls))
        assert diff < (0.5 if tolerance else 1e-3), f"{task_name} {item.id}: log-likelihoods differ by {diff}"
    print(f"{task_name}: {len(items)} items, {len(mismatches)} different choices, {len(near_ties)} bf16 near-ties "
          f"(margin < {tolerance} nats) {near_ties}")
    assert not mismatches, f"{task_name}: choices differ from transformers on {mismatches}"
