"""`qwen25 eval run`: score a model on the registered tasks, offline, and write a table, JSON and per-item records.

Multiple-choice items are scored by log-likelihood on the inference engine (`Engine.score` through
`loglikelihood.score_requests`, each context prefilled once for its choices), encoded as lm-eval encodes them;
three accuracies are kept per task:
  acc           argmax of the summed log-likelihood;
  acc_norm      lm-eval's: log-likelihood divided by the choice's length in characters, without the leading
                space (the table reports acc and this one);
  acc_per_char  OLMES's: divided by the continuation's length, leading space included (JSON only).
Generative items go through a `GenerateFn` (`engine_generate_fn`: the same engine, continuous batching), math
answers through `qwen25.verify.math_answers`, programs through `code_checks` (`qwen25.verify`'s sandbox).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qwen25.eval.code_checks import CodeChecker, check_all, check_completion
from qwen25.eval.generation import GenerateFn, engine_generate_fn
from qwen25.eval.loglikelihood import Request, score_requests, truncate
from qwen25.eval.longctx_tasks import string_match_all
from qwen25.eval.metrics import argmax, mean_and_stderr, pass_at_k
from qwen25.eval.tasks import ChoiceItem, GenItem, Task, TaskSpec, build_task, parse_task_list
from qwen25.inference.engine import Engine
from qwen25.io import atomic_path, atomic_write_text
from qwen25.verify.math_answers import answers_equal, extract_answer
from qwen25.verify.sandbox import detect_isolation


PASS_AT_K = (1, 5, 10, 100)  # code tasks report each k up to --samples


@dataclass
class EvalSettings:
    model: str
    tasks: str
    limit: int | None = None
    shots: int | None = None  # None: each task's default
    chat: bool | None = None  # None: chat prompts for generative tasks when the tokenizer is an instruct one
    out: str | None = None
    dtype: str | None = None
    tokenizer: str | None = None  # default: the model directory's
    batch_tokens: int = 256  # multiple choice: continuation tokens per forward
    batch_size: int = 8  # generation: sequences the engine decodes together
    max_new_tokens: int | None = None  # override every generative task's budget
    samples: int = 1  # generations per problem (pass@k over them)
    temperature: float | None = None  # default: greedy with one sample, 0.8 with several
    timeout: float = 10.0  # seconds per program
    seed: int = 0


@dataclass
class TaskResult:
    task: str
    metric: str
    value: float
    stderr: float
    n: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


# ---- encoding ---------------------------------------------------------------------------------------------

def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation; the continuation's
    ids are the whole text's ids after the context's."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def choice_requests(items: Sequence[ChoiceItem], tokenizer,
                    max_length: int) -> tuple[list[Request], list[list[tuple[int, int]]]]:
    """Requests sharing each item's context, and for every item the (request, continuation) of each choice.
    Truncation to the model's length (lm-eval's rule) can give one item's choices different contexts."""
    requests: list[Request] = []
    where: list[list[tuple[int, int]]] = []
    for item in items:
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        slots = []
        for continuation in item.continuations:
            context_ids, cont_ids = encode_pair(tokenizer, item.context, continuation)
            context_ids = truncate(context_ids, cont_ids, max_length)
            conts = groups.setdefault(context_ids, [])
            slots.append((context_ids, len(conts)))
            conts.append(tuple(cont_ids))
        first = len(requests)
        keys = list(groups)
        requests.extend(Request(k, tuple(groups[k])) for k in keys)
        where.append([(first + keys.index(k), j) for k, j in slots])
    return requests, where


def prompt_ids(tokenizer, item: GenItem) -> list[int]:
    if item.messages:
        ids, _ = tokenizer.encode_chat(list(item.messages), add_generation_prompt=True)
        return ids + tokenizer.encode(item.response_prefix) if item.response_prefix else ids
    return tokenizer.encode(item.prompt)


# ---- scoring ----------------------------------------------------------------------------------------------

def run_choice_task(engine: Engine, tokenizer, task: Task, batch_tokens: int,
                    log: Callable[[str], None] | None = None) -> tuple[list[TaskResult], list[dict]]:
    start = time.perf_counter()
    requests, where = choice_requests(task.items, tokenizer, engine.model.config.max_position_embeddings)
    scores = score_requests(engine, requests, max_tokens=batch_tokens, log=log)
    metrics: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_per_char": []}
    records = []
    for item, slots in zip(task.items, where):
        lls = [scores[r][j].total for r, j in slots]
        preds = {"acc": argmax(lls),
                 "acc_norm": argmax([ll / max(1, len(c)) for ll, c in zip(lls, item.choices)]),
                 "acc_per_char": argmax([ll / max(1, len(c)) for ll, c in zip(lls, item.continuations)])}
        for name, pred in preds.items():
            metrics[name].append(float(pred == item.gold))
        records.append({"task": task.name, "id": item.id, "gold": item.gold, "pred": preds["acc"],
                        "pred_norm": preds["acc_norm"], "loglikelihoods": lls,
                        "greedy": [scores[r][j].greedy for r, j in slots]})
    seconds = time.perf_counter() - start
    if log:
        log(f"{task.name}: {len(task.items)} items in {seconds:.1f} s ({len(task.items) / seconds:.2f} items/s)")
    settings = {**task.settings, "items_per_second": round(len(task.items) / seconds, 3)}
    return [TaskResult(task.name, name, *mean_and_stderr(values), len(values), settings, seconds)
            for name, values in metrics.items()], records


def sampling_temperature(settings: EvalSettings) -> float:
    """--temperature, or its default: greedy with one sample, 0.8 with several (which greedy cannot give)."""
    samples = settings.samples
    temperature = settings.temperature if settings.temperature is not None else (0.8 if samples > 1 else 0.0)
    if samples > 1 and temperature <= 0:
        raise ValueError(f"--samples {samples} needs --temperature > 0 (greedy samples would all be the same)")
    return temperature


def run_generate_task(task: Task, tokenizer, generate: GenerateFn, settings: EvalSettings,
                      checker: CodeChecker = check_completion,
                      log: Callable[[str], None] | None = None) -> tuple[list[TaskResult], list[dict]]:
    start = time.perf_counter()
    samples = settings.samples
    temperature = sampling_temperature(settings)
    budgets: dict[int, list[int]] = {}
    for i, item in enumerate(task.items):
        budget = settings.max_new_tokens or item.reference.get("max_new_tokens") or task.max_new_tokens
        budgets.setdefault(budget, []).append(i)
    outputs: list[list[str]] = [[] for _ in task.items]
    for budget, indices in budgets.items():
        prompts = [prompt_ids(tokenizer, task.items[i]) for i in indices]
        texts = generate(prompts, budget, task.stop, temperature=temperature, seed=settings.seed, n=samples)
        for i, sample_texts in zip(indices, texts):
            outputs[i] = list(sample_texts)
    verdicts = []
    if task.scorer == "code":
        flat = check_all(task.name, [(item.reference, t) for item, texts in zip(task.items, outputs) for t in texts],
                         settings.timeout, checker)
        verdicts = [flat[k * samples:(k + 1) * samples] for k in range(len(task.items))]
    values: list[float] = []
    ks = [k for k in PASS_AT_K if k <= samples]
    pass_at: dict[int, list[float]] = {k: [] for k in ks}  # code: pass@k per problem, unbiased over the samples
    records = []
    for k, (item, texts) in enumerate(zip(task.items, outputs)):
        record = {"task": task.name, "id": item.id, "outputs": texts}
        if task.scorer == "math":
            extracted = [extract_answer(t) for t in texts]
            correct = [e is not None and answers_equal(e, item.reference["answer"])[0] for e in extracted]
            record.update(gold=item.reference["answer"], extracted=extracted, correct=correct)
            values.append(sum(correct) / len(correct))
        elif task.scorer == "code":
            record.update(status=[v.status for v in verdicts[k]], detail=[v.reason[-200:] for v in verdicts[k]])
            for kk in ks:
                pass_at[kk].append(pass_at_k(samples, sum(v.passed for v in verdicts[k]), kk))
        else:
            scores = [string_match_all(item.reference["answers"], t) for t in texts]
            record.update(answers=item.reference["answers"], scores=scores)
            values.append(sum(scores) / len(scores))
        records.append(record)
    if task.scorer == "code":
        values = pass_at[1]
    seconds = time.perf_counter() - start
    metric = {"math": "exact_match", "code": "pass@1", "string_match": "string_match_all"}[task.scorer]
    run_settings = {**task.settings, "samples": samples, "temperature": temperature, "stop": list(task.stop),
                    "max_new_tokens": settings.max_new_tokens or task.max_new_tokens}
    if task.scorer == "code":
        run_settings["sandbox"] = f"qwen25.verify, isolation {detect_isolation()}"
    if log:
        log(f"{task.name}: {len(task.items)} items in {seconds:.1f} s")
    results = [TaskResult(task.name, metric, *mean_and_stderr(values), len(values), run_settings, seconds)]
    if task.scorer == "code":
        results += [TaskResult(task.name, f"pass@{k}", *mean_and_stderr(v), len(v), run_settings, seconds)
                    for k, v in pass_at.items() if k > 1]
    return results, records


# ---- the run ----------------------------------------------------------------------------------------------

def is_instruct(tokenizer) -> bool:
    """An instruct tokenizer ends turns with <|im_end|>; a base one with <|endoftext|>."""
    return tokenizer.eos_id == tokenizer.control_ids["<|im_end|>"]


def load_eval_tokenizer(settings: EvalSettings):
    from qwen25.loading import resolve_model
    from qwen25.tokenizer import load_tokenizer

    if settings.tokenizer is not None:
        return load_tokenizer(settings.tokenizer)
    model_ref = resolve_model(settings.model)
    if not (Path(model_ref) / "tokenizer.json").is_file():
        where = model_ref if Path(model_ref).is_dir() else f"{model_ref!r} (a preset, no directory)"
        raise FileNotFoundError(f"{where}: no tokenizer.json; evaluation needs the model's tokenizer "
                                f"(pass --tokenizer DIR or 'qwen2.5')")
    return load_tokenizer(model_ref)


def stop_token_ids(model) -> list[int]:
    from qwen25.inference.sampling import SamplingParams

    eos = {"eos_token_id": model.generation_config.get("eos_token_id")}
    return sorted(set(model.config.eos_token_ids) | set(SamplingParams.from_generation_config(eos).stop_token_ids))


def run_eval(settings: EvalSettings, log: Callable[[str], None] | None = None,
             generate: GenerateFn | None = None,
             checker: CodeChecker = check_completion) -> tuple[list[TaskResult], list[dict]]:
    """Build every task (a bad name or data file fails before the model loads), load the model, score them."""
    from qwen25.loading import load_model

    names = parse_task_list(settings.tasks)
    sampling_temperature(settings)
    tokenizer = load_eval_tokenizer(settings)
    chat = is_instruct(tokenizer) if settings.chat is None else settings.chat
    tasks = [build_task(TaskSpec(name, variant, settings.shots, chat, settings.limit, settings.seed), tokenizer)
             for name, variant in names]
    model = load_model(settings.model, dtype=settings.dtype).eval()
    torch.manual_seed(settings.seed)
    engine = Engine(model, tokenizer, max_batch=settings.batch_size)
    if generate is None:
        generate = engine_generate_fn(engine, stop_token_ids(model), log)
    results: list[TaskResult] = []
    records: list[dict] = []
    for task in tasks:
        if log:
            log(f"{task.name}: {len(task.items)} items, {task.settings}")
        if task.kind == "choice":
            r, rec = run_choice_task(engine, tokenizer, task, settings.batch_tokens, log)
        else:
            r, rec = run_generate_task(task, tokenizer, generate, settings, checker, log)
        results += r
        records += rec
    if settings.out:
        write_results(settings, results, records, str(next(model.parameters()).dtype).removeprefix("torch."))
    return results, records


def items_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".items.jsonl")


def write_results(settings: EvalSettings, results: list[TaskResult], records: list[dict], dtype: str) -> None:
    summary = {"model": settings.model, "dtype": dtype, "settings": asdict(settings),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch_threads": torch.get_num_threads()},
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": [asdict(r) for r in results]}
    atomic_write_text(settings.out, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with atomic_path(items_path(settings.out)) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


TABLE_METRICS = ("acc", "acc_norm", "exact_match", *(f"pass@{k}" for k in PASS_AT_K), "string_match_all")


def markdown_table(results: Sequence[TaskResult]) -> str:
    """One row per task and metric (acc_norm is lm-eval's: per character of the choice, leading space excluded)."""
    lines = ["| task | metric | value (%) | stderr (%) | n | shots | chat | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.metric in TABLE_METRICS:
            lines.append(f"| {r.task} | {r.metric} | {100 * r.value:.1f} | {100 * r.stderr:.1f} | {r.n} | "
                         f"{r.settings.get('shots', '-')} | {'yes' if r.settings.get('chat') else 'no'} | "
                         f"{r.seconds:.0f} |")
    return "\n".join(lines)
