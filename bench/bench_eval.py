"""Multiple-choice scoring speed: items/s of qwen25's harness vs lm-eval's Hugging Face backend, in one run.

    .venv/bin/python bench/bench_eval.py                                  # the real 0.5B model, 3 tasks x 40 items
    .venv/bin/python bench/bench_eval.py --items 10 --repeats 1           # a quick look

Both score the same (context, continuation) pairs of the same items: qwen25 through `run_choice_task` (the
inference engine's `score`: contexts prefilled once for their choices, LM head on continuation positions only), lm-eval 0.4.13 through `HFLM.loglikelihood`
on Instances built from the same items (its own encoding, batching and one-token-continuation cache; the model
is transformers' AutoModelForCausalLM on the same directory and dtype). The per-item choices of the two are
compared too. Runs alternate between the two (best of --repeats), so slow phases of a shared machine hit both.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from qwen25.eval.harness import run_choice_task  # noqa: E402
from qwen25.eval.metrics import argmax  # noqa: E402
from qwen25.eval.tasks import Task, TaskSpec, build_task  # noqa: E402
from qwen25.inference.engine import Engine  # noqa: E402
from qwen25.loading import load_model, resolve_model  # noqa: E402
from qwen25.tokenizer import load_tokenizer  # noqa: E402


def lm_eval_choices(hflm, items) -> tuple[list[tuple[int, int]], float]:
    """(pred, pred_norm) per item from lm-eval's HF backend, and the seconds its loglikelihood call took."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(item.context, cont), idx=j,
                         metadata=("bench", n, 1))
                for n, item in enumerate(items) for j, cont in enumerate(item.continuations)]
    start = time.perf_counter()
    results = hflm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    preds, k = [], 0
    for item in items:
        lls = [ll for ll, _ in results[k:k + len(item.continuations)]]
        k += len(item.continuations)
        preds.append((argmax(lls), argmax([ll / len(c) for ll, c in zip(lls, item.choices)])))
    return preds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model directory or fetched name")
    parser.add_argument("--tasks", default="arc_easy,hellaswag,mmlu")
    parser.add_argument("--items", type=int, default=40, help="first N items of each task")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size (requests per forward)")
    parser.add_argument("--batch-tokens", type=int, default=256, help="qwen25's continuation tokens per forward")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    directory = resolve_model(args.model)
    ours = Engine(load_model(directory, dtype=args.dtype).eval())
    tokenizer = load_tokenizer(directory)
    hflm = HFLM(pretrained=directory, dtype=args.dtype, batch_size=args.batch_size, device="cpu")
    print(f"# bench_eval: {args.model} {args.dtype}, {args.items} items per task, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| task | items | requests | qwen25 items/s | lm-eval HF items/s | ratio | same choices |")
    print("|---|---|---|---|---|---|---|")
    total = {"ours": 0.0, "theirs": 0.0, "items": 0}
    for name in args.tasks.split(","):
        items = build_task(TaskSpec(name, limit=args.items)).items
        task = Task(name, "choice", items, {})
        best_ours = best_theirs = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, records = run_choice_task(ours, tokenizer, task, args.batch_tokens)
            best_ours = min(best_ours, time.perf_counter() - start)
            theirs, seconds = lm_eval_choices(hflm, items)
            best_theirs = min(best_theirs, seconds)
        same = sum((r["pred"], r["pred_norm"]) == t for r, t in zip(records, theirs))
        requests = sum(len(i.continuations) for i in items)
        print(f"| {name} | {len(items)} | {requests} | {len(items) / best_ours:.2f} | {len(items) / best_theirs:.2f} "
              f"| {best_theirs / best_ours:.2f}x | {same}/{len(items)} |", flush=True)
        total["ours"] += best_ours
        total["theirs"] += best_theirs
        total["items"] += len(items)
    print(f"| all | {total['items']} | | {total['items'] / total['ours']:.2f} | {total['items'] / total['theirs']:.2f} "
          f"| {total['theirs'] / total['ours']:.2f}x | |")
    print(f"# load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
