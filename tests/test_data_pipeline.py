"""The pretraining data pipeline (qwen25/data/pipeline/): records and the content-hash split, heuristic filters,
the teacher's forced-format rating, the distilled student, rebalancing, decontamination and synthetic data as
pieces, then whole datatrove runs: every step's removals, the report section, resuming after a kill, and the
Slurm submission."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from qwen25.data.corpus import CorpusSpec, build_corpus, read_jsonl
from qwen25.data.pipeline.classifier import Student, fit_student
from qwen25.data.pipeline.decontaminate import Decontaminate
from qwen25.data.pipeline.dedup import WordSplitter
from qwen25.data.pipeline.heuristics import HeuristicsConfig, failed_check, measures
from qwen25.data.pipeline.mixture import MixtureConfig, copies, sampling_rates
from qwen25.data.pipeline.planted import KINDS, mix, planted_documents
from qwen25.data.pipeline.quality import DistillStudent, QualityConfig, agreement
from qwen25.data.pipeline.recipe import data_recipe_from_dict, load_data_recipe
from qwen25.data.pipeline.records import content_hash, is_heldout, to_document
from qwen25.data.pipeline.report import data_section
from qwen25.data.pipeline.runner import Decontamination, _settings, run_data_pipeline
from qwen25.data.pipeline.teacher import DIMENSIONS, TEXT_HEAD_CHARS, TOPICS, Teacher, label_documents, read_labels
from qwen25.training.recipe import RecipeError
from tests.data_pipeline_helpers import StallOnce, benchmark_sequences, rule_label, shares_8gram, word_ids

ROOT = Path(__file__).parent.parent
CODE = "import os\n\n\ndef walk(root):\n    \"\"\"Yield every file under root.\"\"\"\n" + "".join(
    f"    for name in os.listdir(root):  # pass {i}\n        yield os.path.join(root, name)\n" for i in range(6))
PROSE = ("The committee met in the spring to review the harbour plans. Several members argued that the old pier "
         "should be restored rather than replaced, since its timber frame had survived two storms. Others wanted "
         "a wider concrete deck for the ferries, which now carry twice as many passengers as ten years ago.")
ZH = ("新华社北京一月二日电。今年以来，各地加快推进农村公路建设，许多山区村庄第一次通上了硬化路，群众出行更加方便。"
      "据交通部门介绍，全年新建和改建农村公路超过十万公里，沿线的学校、卫生院和集市也随之改善。一些地方还开通了"
      "城乡公交，农民进城看病、孩子上学的时间大大缩短。专家认为，道路畅通带动了特色农产品外销，为增加农民收入"
      "创造了条件，但后续的养护资金和管理制度仍需完善，否则新修的道路可能很快损坏。")


# ---- records, split, heuristics -----------------------------------------------------------------------------

def test_heldout_split_follows_the_text_not_its_source_or_position():
    texts = [f"document number {i} about harbours" for i in range(2000)]
    held = {t for t in texts if is_heldout(t, 50)}
    assert 60 < len(held) < 140  # about 5%
    assert {t for t in reversed(texts) if is_heldout(t, 50)} == held  # order and neighbours do not matter
    assert content_hash("e\u0301") == content_hash("\u00e9")  # NFC: the same text, however it is encoded


def test_records_name_the_bad_line():
    with pytest.raises(ValueError, match=r"f.jsonl:3: field 'text' must be a string"):
        to_document({"id": "a"}, "f.jsonl:3")
    with pytest.raises(ValueError, match="field 'id'"):
        to_document({"text": "x", "id": ""}, "f.jsonl:4")
    doc = to_document({"text": "x", "id": "s/1", "source": "s", "domain": "en"})
    assert doc.metadata == {"source": "s", "domain": "en", "scores": {}}


def test_heuristics_drop_planted_junk_for_the_right_reason_and_keep_real_text():
    cfg = load_data_recipe(ROOT / "recipes" / "data-tiny.toml").heuristics
    for text, domain in [(CODE, "code"), (PROSE, "en"), (ZH, "zh")]:
        assert failed_check(measures(text), cfg.for_domain(domain)) is None, text[:40]
    real = [{"text": PROSE, "id": "p", "domain": "en"}]
    junk = planted_documents(real, {"templated": 12, "boilerplate": 8, "symbols": 8}, seed=1)
    reasons = {j["planted"]: set() for j in junk}
    for j in junk:
        reasons[j["planted"]].add(failed_check(measures(j["text"]), cfg.for_domain(j["domain"])))
    assert None not in set().union(*reasons.values())
    assert reasons["symbols"] <= {"digit_word_ratio", "long_word_ratio"}
    assert reasons["boilerplate"] <= {"boilerplate_line_ratio", "dup_line_ratio"}
    # per-domain thresholds: a digit-heavy drill is fine as math, not as English
    drill = "\n".join(f"{a} + {a + 7} = {2 * a + 7}" for a in range(100, 160))
    assert failed_check(measures(drill), cfg.for_domain("math")) is None
    assert failed_check(measures(drill), cfg.for_domain("en")) == "digit_word_ratio"


def test_recipe_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[heuristics.default]\nmax_symbol_ratio = 1.5\n")
    with pytest.raises(RecipeError, match=r"bad.toml: heuristics.max_symbol_ratio must be in \[0, 1\]"):
        load_data_recipe(bad)
    bad.write_text("[heuristics.domains.code]\nmax_symbols = 0.3\n")
    with pytest.raises(RecipeError, match=r"heuristics.domains.code: unknown thresholds \['max_symbols'\]"):
        load_data_recipe(bad)
    bad.write_text("[mixture]\ntarget = { cooking = 1.0 }\n")
    with pytest.raises(RecipeError, match=r"mixture.target: unknown topics \['cooking'\]"):
        load_data_recipe(bad)
    bad.write_text("[dedup]\nbands = 3\n")
    with pytest.raises(RecipeError, match="bad.toml: dedup: unknown key 'bands'"):
        load_data_recipe(bad)


# ---- teacher, student ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher():
    from qwen25.model import ModelConfig, build_model
    from qwen25.tokenizer import load_tokenizer

    cfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, dtype="float32")
    return Teacher(build_model(cfg, seed=0).eval(), load_tokenizer("qwen2.5"), max_doc_tokens=48, batch_size=3)


def test_teacher_shared_prefix_and_padding_change_nothing(teacher):
    """Rating with the cached few-shot prefix, in a padded batch, gives what one plain forward over the whole
    chat gives for the first answer, and the same ratings as each document alone."""
    texts = [PROSE, CODE, ZH, "  short note on tides"]
    batch = teacher.rate(texts)
    alone = [teacher.rate_batch([t])[0] for t in texts]
    for a, b in zip(batch, alone):
        for d in DIMENSIONS:
            assert abs(a.scores[d] - b.scores[d]) < 1e-4
        assert max(abs(a.topic_probs[t] - b.topic_probs[t]) for t in TOPICS) < 1e-4
        assert all(1 <= v <= 5 for v in a.scores.values()) and abs(sum(a.topic_probs.values()) - 1) < 1e-5
    # the full chat, rendered by the chat template, gives the same first answer
    from qwen25.data.pipeline.teacher import EXAMPLES, SYSTEM, _document, reply_text

    messages = [{"role": "system", "content": SYSTEM}]
    for doc, (*scores, topic) in EXAMPLES:
        messages += [{"role": "user", "content": _document(doc)}, {"role": "assistant", "content": reply_text(scores, topic)}]
    text = teacher.tok.decode(teacher.document_ids(PROSE))
    ids, _ = teacher.tok.encode_chat(messages + [{"role": "user", "content": _document(text)}], add_generation_prompt=True)
    ids += teacher.tok.encode_ordinary("Quality: ")
    assert ids == teacher.prefix + teacher.document_ids(PROSE) + teacher.suffix
    with torch.no_grad():
        logits = teacher.model(torch.tensor([ids])).logits[0, -1]
    probs = torch.softmax(logits[teacher.choices[0]].float(), -1)
    expected = float((probs * torch.arange(1, 6)).sum())
    assert abs(expected - batch[0].scores["quality"]) < 1e-4


def test_labels_resume_after_a_torn_write_and_refuse_another_teacher(teacher, tmp_path):
    docs = [{"text": t, "sha256": content_hash(t), "source": s} for t, s in [(PROSE, "a"), (CODE, "b"), (ZH, "c")]]
    out = tmp_path / "labels.jsonl"
    label_documents(teacher, docs[:2], out, "tiny-random", log=lambda *_: None)
    out.write_bytes(out.read_bytes() + b'{"sha256": "torn')  # killed mid-line
    calls = []
    original = teacher.rate_batch
    teacher.rate_batch = lambda texts: calls.append(len(texts)) or original(texts)
    try:
        labels = label_documents(teacher, docs, out, "tiny-random", log=lambda *_: None)
    finally:
        del teacher.rate_batch
    assert calls == [1] and len(labels) == 3 and set(read_labels(out)) == {d["sha256"] for d in docs}
    with pytest.raises(ValueError, match=r"labels.jsonl.meta.json: these labels were made with another teacher "
                                         r"or prompt \(model differ\)"):
        label_documents(teacher, docs, out, "another-model", log=lambda *_: None)
    out.write_text('{"sha256": "x", "scores": {}}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:1: not a teacher label"):
        read_labels(out)


def _rule_corpus(n: int) -> list[str]:
    texts = []
    for i in range(n):
        kind = i % 3
        texts.append(CODE.replace("walk", f"walk_{i}") if kind == 0 else
                     f"Cheap lamp {i} only $9.99 order now! " * 6 if kind == 1 else ZH + f"第{i}期。")
    return texts


def test_student_learns_the_teacher_and_round_trips(tmp_path):
    texts = _rule_corpus(90)
    labels = [rule_label(t) for t in texts]
    student = fit_student(texts[:60], labels[:60], epochs=40)
    cfg = QualityConfig(min_score=3.0)
    report = agreement(student.predict(texts[60:]), labels[60:], cfg)
    assert report["topic_agreement"] == 1.0 and report["keep_agreement"] == 1.0
    assert report["keep_chance"] < 0.7  # the task is not trivially one-sided
    student.save(tmp_path / "s.npz")
    again = Student.load(tmp_path / "s.npz")
    assert torch.equal(student.raw(texts[60:]), again.raw(texts[60:]))
    (tmp_path / "s.npz.json").write_text(json.dumps({"features": {}, "dimensions": ["x"], "topics": list(TOPICS)}))
    with pytest.raises(ValueError, match="classifier made for dimensions"):
        Student.load(tmp_path / "s.npz")


def test_the_student_learns_from_labelled_texts_the_corpus_lacks(tmp_path):
    """Labels carry their text's beginning: documents absent from the corpus being filtered still train the student;
    a label without one is joined with the corpus by content hash."""
    texts = _rule_corpus(60)
    labels = tmp_path / "labels.jsonl"
    rows = [{**rule_label(t), "text_head": t[:TEXT_HEAD_CHARS]} for t in texts[:48]]
    rows += [rule_label(t) for t in texts[48:]]  # no text: only the two of these in the corpus count
    labels.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    corpus = tmp_path / "input"
    corpus.mkdir()
    (corpus / "00000.jsonl").write_text("".join(json.dumps({"text": t, "id": f"d{i}"}) + "\n"
                                                for i, t in enumerate(texts[48:50])))
    cfg = QualityConfig(labels=str(labels), min_score=3.0, min_labels=10, epochs=40)
    list(DistillStudent(str(corpus), str(tmp_path / "student"), cfg).run(None, 0, 1))
    report = json.loads((tmp_path / "student" / "agreement.json").read_text())
    assert report["train_docs"] + report["heldout"]["docs"] == 50
    assert report["heldout"]["topic_agreement"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rule_label(texts[0]), "text_head": 7}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: field 'text_head'"):
        read_labels(bad)


# ---- mixture, decontamination, synthetic data -----------------------------------------------------------------

def test_rebalancing_rates_reach_the_target_within_the_cap():
    counts = {"news": 600, "shopping": 300, "science": 50, "other": 50}
    cfg = MixtureConfig(target={"news": 0.4, "shopping": 0.15, "science": 0.2}, max_upsample=3.0)
    rates = sampling_rates(counts, cfg)
    assert rates["other"] == 1.0  # not named: untouched
    assert rates["science"] == 3.0  # wanted 4x, capped
    after = {t: counts[t] * rates[t] for t in counts}
    assert after["news"] == pytest.approx(400) and after["shopping"] == pytest.approx(150)
    n = [copies(1.7, f"text {i}") for i in range(4000)]
    assert set(n) == {1, 2} and sum(n) / len(n) == pytest.approx(1.7, abs=0.03)
    assert n == [copies(1.7, f"text {i}") for i in range(4000)]  # deterministic
    with pytest.raises(ValueError, match="must sum to at most 1"):
        MixtureConfig(target={"news": 0.7, "science": 0.5}).check()


def test_decontamination_drops_documents_holding_a_test_item():
    from datatrove.data import Document

    from qwen25.data.pipeline.planted import BENCHMARK_ITEMS

    step = Decontaminate(benchmark_sequences, shares_8gram, word_ids)
    docs = [Document(PROSE + "\n\n" + BENCHMARK_ITEMS[3], "a"), Document(PROSE, "b"),
            Document(BENCHMARK_ITEMS[7], "c"), Document(BENCHMARK_ITEMS[1][:40], "d")]
    kept = [d.id for d in step.run(iter(docs))]
    assert kept == ["b", "d"]  # a fragment shorter than the rule's 8 words is not a hit
    assert docs[0].metadata["contaminated_by"] == 3


def test_synthetic_data_keeps_only_verified_and_rewarded(tmp_path):
    from qwen25.data.pipeline.synthetic import synthesize
    from qwen25.data.queries import build_queries

    references = {q.messages[-1]["content"]: q.reference for q in build_queries({"math": 6, "code": 2}, seed=3)}

    class HalfRight:
        name = "half-right"

        def __call__(self, prompts, k, seed):
            out = []
            for messages in prompts:
                prompt = messages[-1]["content"]
                right = references[prompt]
                wrong = "The answer is \\boxed{-1}." if "boxed" in prompt else "```python\ndef f():\n    pass\n```"
                out.append([right, wrong][:k])
            return out

    stats = synthesize(HalfRight(), tmp_path, {"math": 6, "code": 2}, k=2, seed=3, progress=False)
    assert stats["math"] == {"queries": 6, "samples": 12, "verified": 6, "kept": 6}
    assert stats["code"]["verified"] == 2 and stats["code"]["kept"] == 2
    records = list(read_jsonl(tmp_path / "synthetic.jsonl"))
    assert len(records) == 8 and {r["domain"] for r in records} == {"math", "code"}
    assert all(r["license"] == "generated by half-right" for r in records)
    stats = synthesize(HalfRight(), tmp_path, {"math": 6, "code": 2}, k=2, seed=3, progress=False,
                       reward=lambda q, r: 1.0 if q.family == "code" else 0.0, min_reward=0.5)
    assert stats["math"]["kept"] == 0 and stats["code"]["kept"] == 2


# ---- whole runs -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small real corpus plus planted junk of every kind, and rule-based teacher labels for half of it."""
    base = tmp_path_factory.mktemp("corpus")
    build_corpus(CorpusSpec(bytes_per_domain={"code": 40_000, "en": 40_000, "zh": 40_000, "math": 10_000},
                            heldout_per_mille=100, seed=2), base / "raw", log=lambda *_: None)
    real = list(read_jsonl(base / "raw" / "train.jsonl"))
    counts = {"templated": 6, "boilerplate": 4, "symbols": 3, "exact_duplicate": 6, "near_duplicate": 6,
              "benchmark": 4}
    planted = planted_documents(real, counts, seed=5)
    corpus = base / "planted"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                for r in mix(real, planted, seed=5)))
    (corpus / "heldout.jsonl").write_text((base / "raw" / "heldout.jsonl").read_text())
    labels = base / "labels.jsonl"
    labels.write_text("".join(json.dumps(rule_label(r["text"])) + "\n" for r in (real + planted)[::2]))
    return corpus, labels, real, planted


def _recipe(labels: Path, tasks: int = 3, **executor) -> dict:
    raw = {"executor": {"tasks": tasks, "workers": 1, **executor},
           "heuristics": {"domains": {"zh": {"min_chars": 80},
                                      "code": {"max_dup_line_ratio": 0.6, "max_dup_ngram_ratio": 0.9},
                                      "math": {"max_digit_word_ratio": 1.0, "max_dup_ngram_ratio": 1.0}}},
           "dedup": {"buckets": 16, "hashes_per_bucket": 6},  # recipes/data-tiny.toml's
           "quality": {"labels": str(labels), "min_score": 3.0, "min_labels": 10, "epochs": 30},
           "mixture": {"target": {"software": 0.5, "news": 0.2, "shopping": 0.02}, "max_upsample": 2.0}}
    return raw


def _decontamination(rule=shares_8gram) -> Decontamination:
    return Decontamination("8-gram test rule", benchmark_sequences, rule, word_ids)


@pytest.fixture(scope="module")
def full_run(small_corpus, tmp_path_factory):
    corpus, labels, real, planted = small_corpus
    out = tmp_path_factory.mktemp("run") / "out"
    summary = run_data_pipeline(data_recipe_from_dict(_recipe(labels)), corpus, out, _decontamination(),
                                log=lambda *_: None)
    return out, summary


def _removed_ids(out: Path, step: str) -> set[str]:
    ids = set()
    for path in (out / "work" / "removed" / step).glob("*.jsonl"):
        ids |= {json.loads(line)["id"] for line in path.read_text().splitlines()}
    return ids


def _jaccard(a: str, b: str, n: int = 5) -> float:
    """Word n-gram Jaccard similarity with the dedup step's words (CJK characters one by one)."""
    grams = [{tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}
             for w in (WordSplitter().word_tokenize(t.lower()) for t in (a, b))]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


def test_every_step_removes_its_kind_of_junk(small_corpus, full_run):
    corpus, _, real, planted = small_corpus
    out, summary = full_run
    by_kind = {k: {p["id"] for p in planted if p["planted"] == k} for k in KINDS}
    heuristics = _removed_ids(out, "heuristics")
    assert by_kind["templated"] | by_kind["boilerplate"] | by_kind["symbols"] <= heuristics
    # of each planted copy and its original, at most one survives, for every exact copy and every near copy similar
    # enough for 16x6 LSH to find it with probability >= 0.87 (word 5-gram Jaccard >= 0.7)
    train = list(read_jsonl(out / "train.jsonl"))
    kept_ids = {r["id"].split("#")[0] for r in train}
    text_of = {r["id"]: r["text"] for r in real}
    resolved = 0
    for p in planted:
        if p["planted"] in ("exact_duplicate", "near_duplicate") and p["planted_from"] not in heuristics:
            if p["planted"] == "near_duplicate" and _jaccard(p["text"], text_of[p["planted_from"]]) < 0.7:
                continue
            assert (p["id"] in kept_ids) + (p["planted_from"] in kept_ids) <= 1, p["id"]
            resolved += p["planted"] == "near_duplicate"
    assert resolved >= 2
    assert _removed_ids(out, "exact_dedup") and _removed_ids(out, "near_dedup")
    benchmark = {p["id"] for p in planted if p["planted"] == "benchmark"}
    assert benchmark.isdisjoint(kept_ids)
    assert _removed_ids(out, "decontamination") <= benchmark | {p["planted_from"] for p in planted
                                                                if "planted_from" in p}
    assert _removed_ids(out, "decontamination") & benchmark  # the ones the heuristics let through
    # the student learnt the rule teacher's verdict: low-quality reviews go, little else does
    reached = [r for r in read_jsonl(corpus / "train.jsonl")
               if r["id"] not in set().union(*(_removed_ids(out, s) for s in
                                               ("heuristics", "exact_dedup", "near_dedup", "decontamination")))]
    low = {r["id"] for r in reached if rule_label(r["text"])["scores"]["quality"] < 3}
    removed = _removed_ids(out, "quality")
    assert low and len(removed & low) >= 0.8 * len(low) and len(removed - low) <= 0.2 * len(removed)
    # the counts chain: each step's input is the previous step's output
    steps = summary["steps"]
    assert [s["step"] for s in steps] == ["heuristics", "exact_dedup", "near_dedup", "decontamination", "quality"]
    assert all(a["out"] == b["in"] for a, b in zip(steps, steps[1:]))
    n_in = sum(1 for _ in read_jsonl(corpus / "train.jsonl")) + sum(1 for _ in read_jsonl(corpus / "heldout.jsonl"))
    assert steps[0]["in"] == n_in


def test_rebalancing_touches_training_documents_only_and_is_reported(small_corpus, full_run):
    corpus, *_ = small_corpus
    out, summary = full_run
    heldout_in = {r["id"] for r in read_jsonl(corpus / "heldout.jsonl")}
    heldout_out = [r["id"] for r in read_jsonl(out / "heldout.jsonl")]
    assert set(heldout_out) <= heldout_in and len(heldout_out) == len(set(heldout_out))
    mixture = summary["mixture"]
    assert mixture["rates"]["software"] != 1.0
    after = {t: c["bytes"] for t, c in mixture["after"].items()}
    train = list(read_jsonl(out / "train.jsonl"))
    assert sum(after.values()) == sum(len(r["text"].encode()) for r in train)
    copies_ = [r for r in train if "#" in r["id"]]
    assert copies_ and all(r["topic"] in mixture["target"] for r in copies_)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"]["steps"] == summary["steps"] and "data_pipeline_sha256" in manifest["spec"]
    section = data_section(summary)
    for needle in ("| heuristics |", "| near_dedup |", "### Topic mixture", "### Examples of removed documents",
                   "agrees with the teacher"):
        assert needle in section


def test_a_killed_run_resumes_without_redoing_finished_work(small_corpus, full_run, tmp_path):
    """Kill the run (SIGKILL to its process group) while task 1 of the filter+score stage is running; the rerun
    skips finished stages and tasks, redoes task 1 from scratch, and ends with the uninterrupted run's output."""
    corpus, labels, real, planted = small_corpus
    reference, _ = full_run
    out = tmp_path / "out"
    flag = tmp_path / "stalled"
    # a word of one document that task 1 scores, found in no other document: the run stalls there
    seen: dict[int, int] = {}
    for path in sorted((reference / "work" / "input").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for w in set(word_ids(json.loads(line)["text"])):
                seen[w] = seen.get(w, 0) + 1
    task1_docs = (reference / "work" / "kept" / "00001.jsonl").read_text().splitlines()
    task1_word = next(w for line in task1_docs[len(task1_docs) // 2:] for w in word_ids(json.loads(line)["text"])
                      if seen[w] == 1)
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from qwen25.data.pipeline.recipe import data_recipe_from_dict
from qwen25.data.pipeline.runner import Decontamination, run_data_pipeline
from tests.data_pipeline_helpers import StallOnce, benchmark_sequences, word_ids
if __name__ == "__main__":
    rule = StallOnce({str(flag)!r}, {task1_word})
    d = Decontamination("8-gram test rule", benchmark_sequences, rule, word_ids)
    run_data_pipeline(data_recipe_from_dict(json.loads({json.dumps(json.dumps(_recipe(labels)))})), {str(corpus)!r},
                      {str(out)!r}, d, log=lambda *_: None)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), "the run never reached the stalling document"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    logs = out / "work" / "logs"
    done_before = {p: p.stat().st_mtime_ns for p in logs.glob("*/completions/*")}
    assert logs.joinpath("filter+score", "completions", "00000").exists()
    assert not logs.joinpath("filter+score", "completions", "00001").exists()
    outputs_before = {p: p.stat().st_mtime_ns for p in (out / "work" / "kept").glob("*.jsonl")}

    summary = run_data_pipeline(data_recipe_from_dict(_recipe(labels)), corpus, out,
                                Decontamination("8-gram test rule", benchmark_sequences,
                                                StallOnce(str(flag), task1_word), word_ids), log=lambda *_: None)
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    kept = out / "work" / "kept"
    assert (kept / "00000.jsonl").stat().st_mtime_ns == outputs_before[kept / "00000.jsonl"]  # task 0 not redone
    assert summary["timings_s"]["heuristics+exact_signatures"] < 5  # skipped: every task was complete
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert summary["steps"] == json.loads((reference / "summary.json").read_text())["steps"]


def test_changed_settings_start_over(small_corpus, full_run, tmp_path):
    corpus, labels, *_ = small_corpus
    out = tmp_path / "out"
    raw = _recipe(labels)
    raw["quality"]["labels"] = ""
    raw["dedup"]["near"] = False
    first = run_data_pipeline(data_recipe_from_dict(raw), corpus, out, log=lambda *_: None)
    assert [s["step"] for s in first["steps"]] == ["heuristics", "exact_dedup"] and "mixture" not in first
    raw["dedup"]["exact"] = False
    messages = []
    second = run_data_pipeline(data_recipe_from_dict(raw), corpus, out, log=messages.append)
    assert any("settings differ" in m and "starting over" in m for m in messages)
    assert [s["step"] for s in second["steps"]] == ["heuristics"]
    # new labels in the same file are new settings too
    relabelled = tmp_path / "labels.jsonl"
    relabelled.write_bytes(labels.read_bytes())
    recipe = data_recipe_from_dict(_recipe(relabelled))
    files = [(corpus / "train.jsonl", "train"), (corpus / "heldout.jsonl", "heldout")]
    before = _settings(recipe, files, None)
    relabelled.write_text(relabelled.read_text().splitlines()[0] + "\n")
    assert _settings(recipe, files, None) != before


def test_slurm_executor_submits_the_chain_and_its_pickles_run(small_corpus, tmp_path):
    """Stand-in `sbatch` (records each script) and `scontrol`: the stages are chained by afterok dependencies, and
    the first stage runs from its pickled executor the way a Slurm array task would."""
    corpus, labels, *_ = small_corpus
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nn=$(ls "$SBATCH_LOG" | grep -c sh$)\ncat > "$SBATCH_LOG/job-$n.sh"\n'
                                    'echo "$@" > "$SBATCH_LOG/job-$n.args"\necho "Submitted batch job $((100 + n))"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node1\n")  # `scontrol show hostnames` inside a job
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    submitted = tmp_path / "submitted"
    submitted.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(submitted)}
    raw = _recipe(labels, kind="slurm", slurm={"partition": "cpu", "time": "01:00:00"})
    out = tmp_path / "out"
    script = f"""
import json
from qwen25.data.pipeline.recipe import data_recipe_from_dict
from qwen25.data.pipeline.runner import run_data_pipeline
if __name__ == "__main__":
    summary = run_data_pipeline(data_recipe_from_dict(json.loads({json.dumps(json.dumps(raw))})), {str(corpus)!r},
                                {str(out)!r}, log=lambda *_: None)
    print(json.dumps(summary))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads(done.stdout.strip().splitlines()[-1])["submitted"]
    logs = out / "work" / "logs"
    assert all((logs / s / "launch_script.slurm").is_file() for s in stages)
    args = [(submitted / f"job-{i}.args").read_text() for i in range(len(list(submitted.glob("*.args"))))]
    chained = [a for a in args if "--dependency=afterok:" in a]
    assert len(chained) >= len(stages) - 1  # every stage after the first waits for the one before
    first = stages[0]
    assert "--partition=cpu" in (logs / first / "launch_script.slurm").read_text()
    run = subprocess.run([str(Path(sys.executable).parent / "launch_pickled_pipeline"),
                          str(logs / first / "executor.pik")], cwd=ROOT,
                         env={**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_NODELIST": "node1"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (logs / first / "completions" / "00000").exists()
    assert (out / "work" / "student" / "student.npz").is_file()


def test_ray_executor_gives_the_local_output(small_corpus, full_run, tmp_path):
    """The same stages on Ray (a local Ray with two CPUs) write what the local executor wrote."""
    pytest.importorskip("ray")
    corpus, labels, *_ = small_corpus
    reference, _ = full_run
    out = tmp_path / "out"
    raw = _recipe(labels, kind="ray", workers=2, ray={"mem_per_cpu_gb": 0.5})
    script = f"""
import json
from qwen25.data.pipeline.recipe import data_recipe_from_dict
from qwen25.data.pipeline.runner import run_data_pipeline
from tests.data_pipeline_helpers import benchmark_sequences, shares_8gram, word_ids
from qwen25.data.pipeline.runner import Decontamination
if __name__ == "__main__":
    d = Decontamination("8-gram test rule", benchmark_sequences, shares_8gram, word_ids)
    run_data_pipeline(data_recipe_from_dict(json.loads({json.dumps(json.dumps(raw))})), {str(corpus)!r},
                      {str(out)!r}, d, log=lambda *_: None)
"""
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
