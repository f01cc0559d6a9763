"""The post-training data pipeline: query builders, verification dispatch, SFT records and preference pairs
with provenance, resuming after a kill, end to end on a tiny random model through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from qwen25.data.curation import (_read_done, curate, preference_pairs, query_seed, sample_and_verify,
                                  verify_response)
from qwen25.data.queries import FAMILIES, build_queries, read_queries, write_queries


def test_query_builders_are_deterministic_and_cover_every_family(tmp_path):
    counts = {family: 4 for family in FAMILIES}
    a, b = build_queries(counts, seed=3), build_queries(counts, seed=3)
    assert [q.to_dict() for q in a] == [q.to_dict() for q in b]
    assert [q.to_dict() for q in a] != [q.to_dict() for q in build_queries(counts, seed=4)]
    assert {q.family for q in a} == set(FAMILIES) and len({q.id for q in a}) == len(a)
    write_queries(a, tmp_path / "q.jsonl")
    assert [q.to_dict() for q in read_queries(tmp_path / "q.jsonl")] == [q.to_dict() for q in a]


def test_reference_responses_pass_their_verifiers():
    queries = build_queries({"math": 6, "code": 12}, seed=0)  # 12: every code template once
    for q in queries:
        verdict = verify_response(q, q.reference)
        assert verdict.passed, (q.id, q.reference, verdict)
        assert not verify_response(q, "I do not know.").passed


def test_structured_and_logic_queries_are_well_formed():
    for q in build_queries({"structured": 6, "logic": 6}, seed=1):
        if q.verifier["kind"] == "json_schema":
            jsonschema.Draft202012Validator.check_schema(q.verifier["schema"])
        elif q.verifier["kind"] == "choice":
            gold_option = q.messages[0]["content"].split(f"({q.verifier['gold']}) ")[1].split()[0]
            divisor = int(q.messages[0]["content"].split("divisible by ")[1].split("?")[0])
            assert int(gold_option) % divisor == 0
        assert verify_response(q, "") is not None


def test_bad_query_files_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    q = build_queries({"math": 1})[0].to_dict()
    path.write_text(json.dumps(q) + "\n" + json.dumps(q) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:2: duplicate query id 'math-000000'"):
        read_queries(path)
    path.write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: not a query record"):
        read_queries(path)


class ScriptedGenerator:
    """Answers each query with [its reference, a wrong answer, its reference again]; records its calls."""
    name = "scripted"

    def __init__(self, queries, fail_after: int | None = None):
        self.by_prompt = {q.messages[0]["content"]: q for q in queries}
        self.calls: list[int] = []
        self.fail_after = fail_after

    def __call__(self, prompts, k, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(seed)
        out = []
        for messages in prompts:
            q = self.by_prompt[messages[0]["content"]]
            out.append(([q.reference, "wrong: \\boxed{-1}"] * k)[:k])
        return out


def test_sft_and_pairs_keep_verified_responses_with_provenance(tmp_path):
    queries = build_queries({"math": 3, "code": 2}, seed=0)
    write_queries(queries, tmp_path / "q.jsonl")
    summary = curate(tmp_path / "q.jsonl", ScriptedGenerator(queries), tmp_path / "run", k=3, seed=7, progress=False)
    sft = [json.loads(line) for line in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()]
    assert len(sft) == 5 and len(pairs) == 5
    for record, q in zip(sft, queries):
        assert record["messages"][-1] == {"role": "assistant", "content": q.reference}
        prov = record["provenance"]
        assert prov["query_id"] == q.id and prov["family"] == q.family and prov["source"] == q.source
        assert prov["generator"] == "scripted" and prov["seed"] == query_seed(7, q.id)
        assert prov["verdict"]["passed"] and prov["verifier"] == q.verifier["kind"]
    for pair, q in zip(pairs, queries):
        assert pair["prompt"] == q.messages and pair["chosen"] == q.reference and pair["rejected"].startswith("wrong")
        assert pair["provenance"]["rejected"]["verdict"]["passed"] is False
    assert "| math | 3 | 9 | 66.7% | 3 | 3 |" in summary and "| all | 5 | 15 |" in summary
    assert (tmp_path / "run" / "summary.md").read_text().count("| code |") == 1


def test_resume_after_a_crash_gives_the_same_samples(tmp_path):
    queries = build_queries({"math": 4, "logic": 2}, seed=0)
    write_queries(queries, tmp_path / "q.jsonl")
    whole = ScriptedGenerator(queries)
    curate(tmp_path / "q.jsonl", whole, tmp_path / "whole", k=2, progress=False)
    crashing = ScriptedGenerator(queries, fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate(tmp_path / "q.jsonl", crashing, tmp_path / "resumed", k=2, progress=False)
    with (tmp_path / "resumed" / "samples.jsonl").open("a") as f:
        f.write('{"query_id": "torn')  # killed mid-write
    resumed = ScriptedGenerator(queries)
    curate(tmp_path / "q.jsonl", resumed, tmp_path / "resumed", k=2, progress=False)
    assert len(resumed.calls) == 3  # only the unfinished queries were sampled again
    for name in ("samples.jsonl", "sft.jsonl", "pairs.jsonl", "summary.md"):
        whole_text = (tmp_path / "whole" / name).read_text().replace("whole", "X")
        assert whole_text == (tmp_path / "resumed" / name).read_text().replace("resumed", "X"), name


def test_resume_refuses_other_settings(tmp_path):
    queries = build_queries({"math": 2}, seed=0)
    write_queries(queries, tmp_path / "q.jsonl")
    curate(tmp_path / "q.jsonl", ScriptedGenerator(queries), tmp_path / "run", k=2, progress=False)
    with pytest.raises(ValueError, match=r"run.json: .*\(k differ\)"):
        curate(tmp_path / "q.jsonl", ScriptedGenerator(queries), tmp_path / "run", k=3, progress=False)


def test_torn_line_is_cut(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"query_id": "a"}\n{"query_')
    assert list(_read_done(path)) == ["a"] and path.read_text() == '{"query_id": "a"}\n'
    assert preference_pairs([], []) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        sample_and_verify([], ScriptedGenerator([]), tmp_path / "x", 0, 0, "")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer model with the official vocabulary, saved with its tokenizer."""
    from qwen25.model import build_model, get_preset, save_pretrained
    from qwen25.tokenizer import load_tokenizer

    cfg, gen = get_preset("qwen25-tiny")
    cfg = dataclasses.replace(cfg, vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1)
    model = build_model(cfg, seed=0)
    model.generation_config = gen
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(model, path)
    load_tokenizer("qwen2.5").save(path)
    return path


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "qwen25.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_model_survives_sigkill(tmp_path, tiny_model_dir):
    queries = build_queries({"math": 3, "code": 2, "instructions": 1}, seed=0)
    write_queries(queries, tmp_path / "q.jsonl")
    common = ["--queries", str(tmp_path / "q.jsonl"), "--model", str(tiny_model_dir), "--k", "2",
              "--max-new-tokens", "8", "--seed", "5"]
    whole = _cli("data", "sft-build", *common, "--out", str(tmp_path / "whole"))
    killed = _cli("data", "pairs", *common, "--out", str(tmp_path / "killed"))
    samples = tmp_path / "killed" / "samples.jsonl"
    deadline = time.monotonic() + 300
    while not (samples.exists() and samples.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert 2 <= samples.read_text().count("\n") < len(queries)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    assert "| all | 6 | 12 |" in out and "sft.jsonl written" in out
    resumed = _cli("data", "pairs", *common, "--out", str(tmp_path / "killed"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert (tmp_path / "whole" / "samples.jsonl").read_text() == samples.read_text()
    assert (tmp_path / "whole" / "pairs.jsonl").read_text() == (tmp_path / "killed" / "pairs.jsonl").read_text()
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["query_id"] for r in records] == [q.id for q in queries]
    assert all(len(r["responses"]) == 2 and str(tiny_model_dir) in r["generator"] for r in records)
    assert all(r["seed"] == query_seed(5, r["query_id"]) for r in records)


def test_model_written_verifiers_become_queries_and_judge_responses(tmp_path):
    from qwen25.data.autoif import autoif_queries
    from tests.test_verify_model_written import BUGGY, GOOD

    class Writer:
        name = "writer"

        def __call__(self, prompts, k, seed):
            return [[GOOD, BUGGY.replace("Answer in", "Reply in"), "no format at all", GOOD][:k] for _ in prompts]

    queries, outcomes = autoif_queries(Writer(), n_prompts=1, k=4)
    assert outcomes == {"kept": 1, "failed its tests": 1, "unparsable": 1, "duplicate": 1}
    assert queries[0].messages[0]["content"] == "Answer in at most 5 words, all in lowercase."
    write_queries(queries, tmp_path / "q.jsonl")

    class Responder:
        name = "responder"

        def __call__(self, prompts, k, seed):
            return [["fine by me", "Not Fine At All"] for _ in prompts]

    summary = curate(tmp_path / "q.jsonl", Responder(), tmp_path / "run", k=2, progress=False)
    assert "| instructions_code | 1 | 2 | 50.0% | 1 | 1 |" in summary
    pair = json.loads((tmp_path / "run" / "pairs.jsonl").read_text())
    assert (pair["chosen"], pair["rejected"]) == ("fine by me", "Not Fine At All")
    assert pair["provenance"]["chosen"]["verifier"] == "model_written"
