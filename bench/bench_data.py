"""Measurements of the pretraining data pipeline (docs/data.md), on the `make run` corpus plus planted junk.

    .venv/bin/python bench/bench_data.py plant         # corpus (recipes/tiny.toml's spec) + planted junk
    .venv/bin/python bench/bench_data.py dedup         # datatrove's MinHash vs datasketch: time, precision, recall
    .venv/bin/python bench/bench_data.py removal       # the whole pipeline: precision/recall of removal per step
    .venv/bin/python bench/bench_data.py classifiers   # the student vs a small qwen25 model with a score head
    .venv/bin/python bench/bench_data.py ablation      # tiny pretraining on raw vs filtered corpus, equal tokens

Everything goes under --work (runs/bench-data). `plant` writes `planted/` (train: real documents and planted
junk; heldout: the corpus's own held-out split, clean) and `label_input.jsonl` (the per-source sample the
instruct model rated for data/labels/: `qwen25 data label --input runs/bench-data/label_input.jsonl ...`).

Decontamination here uses the report's rule (token LCS >= 13 and >= 0.6 of the shorter sequence, official
Qwen2.5 tokens) against the hand-made `BENCHMARK_ITEMS`, implemented in this script for the measurement; the
pipeline itself takes the evaluation package's rule as a parameter.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwen25.data.corpus import CorpusSpec, build_corpus, read_jsonl  # noqa: E402
from qwen25.data.pipeline.planted import BENCHMARK_ITEMS, KINDS, mix, planted_documents  # noqa: E402
from qwen25.data.pipeline.records import content_hash  # noqa: E402
from qwen25.io import atomic_write_text  # noqa: E402
from qwen25.data.pipeline.runner import REMOVAL_STEPS, Decontamination  # noqa: E402

PLANTED = {"templated": 300, "boilerplate": 200, "symbols": 100, "exact_duplicate": 300, "near_duplicate": 300,
           "benchmark": 48}
LABEL_JUNK = {"templated": 16, "boilerplate": 12, "symbols": 8, "near_duplicate": 8, "benchmark": 6}
TARGET_KINDS = {"heuristics": ("templated", "boilerplate", "symbols"), "exact_dedup": ("exact_duplicate",),
                "near_dedup": ("near_duplicate",), "decontamination": ("benchmark",), "quality": ()}


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    return f"{model}, {platform.machine()}, load {' '.join(load)}"


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---- plant ----------------------------------------------------------------------------------------------------

def plant(work: Path) -> None:
    from qwen25.pretraining.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "tiny.toml")
    spec = CorpusSpec(bytes_per_domain=dict(r.data.bytes_per_domain), heldout_per_mille=r.data.heldout_per_mille,
                      seed=r.seed)
    build_corpus(spec, work / "corpus")
    real = list(read_jsonl(work / "corpus" / "train.jsonl"))
    junk = planted_documents(real, PLANTED, seed=11)
    write_jsonl(work / "planted" / "train.jsonl", mix(real, junk, seed=11))
    shutil.copy(work / "corpus" / "heldout.jsonl", work / "planted" / "heldout.jsonl")
    label_junk = planted_documents(real, LABEL_JUNK, seed=7)
    write_jsonl(work / "label_input.jsonl", real + label_junk)
    print(f"planted: {len(real)} real + {len(junk)} junk training documents ({dict(Counter(j['planted'] for j in junk))})"
          f" -> {work / 'planted'}; label input {len(real) + len(label_junk)} -> {work / 'label_input.jsonl'}")


# ---- the report's contamination rule, for measurement --------------------------------------------------------

def lcs_length(a: np.ndarray, b: np.ndarray) -> int:
    """Longest common subsequence of two id arrays, a row of the DP table at a time: row i is the running max of
    max(previous row, previous row shifted by one + 1 where b matches a[i])."""
    prev = np.zeros(len(b) + 1, dtype=np.int32)
    for x in a:
        diag = np.where(b == x, prev[:-1] + 1, 0)
        row = np.maximum(prev[1:], diag)
        prev = np.concatenate([[0], np.maximum.accumulate(row)]).astype(np.int32)
    return int(prev[-1])


class ReportRule:
    """LCS(s_t, s_e) >= 13 and >= 0.6 * min(|s_t|, |s_e|); a bag-of-tokens bound skips pairs that cannot pass.

    `window` > 0 applies the rule to training sequences of `window` times the test item's length (half-overlapping,
    so a copied item lies whole inside one), not to the whole document: an LCS is a subsequence, and a long document
    holds most of a short item's common tokens in order whatever it is about (docs/data.md measures both)."""

    def __init__(self, window: float = 0.0) -> None:
        self.window = window

    def __call__(self, train_ids, test_ids) -> bool:
        size = max(int(self.window * len(test_ids)), 2) if self.window else len(train_ids)
        step = max(size // 2, 1)
        test_counts = Counter(test_ids)
        test = np.asarray(test_ids)
        for start in range(0, max(len(train_ids) - size, 0) + 1, step):
            seq = train_ids[start:start + size]
            need = max(13, math.ceil(0.6 * min(len(seq), len(test_ids))))
            seq_counts = Counter(seq)
            if sum(min(c, seq_counts[t]) for t, c in test_counts.items()) < need:
                continue
            if lcs_length(test, np.asarray(seq)) >= need:
                return True
        return False


class OfficialTokens:
    def __init__(self) -> None:
        self._tok = None

    def __call__(self, text: str) -> list[int]:
        if self._tok is None:
            from qwen25.tokenizer import load_tokenizer

            self._tok = load_tokenizer("qwen2.5")
        return self._tok.encode_ordinary(text)


def benchmark_ids() -> list[list[int]]:
    tok = OfficialTokens()
    return [tok(item) for item in BENCHMARK_ITEMS]


# ---- dedup: datatrove vs datasketch ---------------------------------------------------------------------------

def shingle_sets(texts: list[str], ngrams: int) -> list[set[str]]:
    from datatrove.utils.text import TextNormConfig, simplify_text

    from qwen25.data.pipeline.dedup import WordSplitter

    norm, split = TextNormConfig(norm_numbers=False), WordSplitter()
    out = []
    for t in texts:
        words = split.word_tokenize(simplify_text(t, norm))
        out.append({" ".join(words[i:i + ngrams]) for i in range(max(len(words) - ngrams + 1, 1))})
    return out


def dedup_quality(records: list[dict], removed: set[str], shingles: dict[str, set[str]],
                  kept: list[str] | None = None) -> dict:
    """Planted pairs resolved (one of copy/original removed) and, for every removal, whether it is right: a member
    of a planted pair, or really similar to a kept document (5-gram Jaccard >= 0.7)."""
    pairs = [(r["id"], r["planted_from"]) for r in records if r.get("planted") in ("exact_duplicate", "near_duplicate")]
    resolved = {kind: [0, 0] for kind in ("exact_duplicate", "near_duplicate")}
    kinds = {r["id"]: r.get("planted") for r in records}
    for copy, original in pairs:
        resolved[kinds[copy]][1] += 1
        resolved[kinds[copy]][0] += copy in removed or original in removed
    kept = [r["id"] for r in records if r["id"] not in removed] if kept is None else kept
    sizes = {i: len(s) for i, s in shingles.items()}
    members = {i for pair in pairs for i in pair}
    confirmed = 0
    for doc in removed:
        if doc in members:
            confirmed += 1
            continue
        s = shingles[doc]
        best = 0.0
        for other in kept:
            lo, hi = sorted((sizes[doc], sizes[other]))
            if hi == 0 or lo / hi < 0.7:
                continue
            best = max(best, len(s & shingles[other]) / len(s | shingles[other]))
            if best >= 0.7:
                break
        confirmed += best >= 0.7
    return {"removed": len(removed), "confirmed_similar": confirmed,
            "precision": confirmed / len(removed) if removed else 1.0,
            "recall": {k: v[0] / v[1] for k, v in resolved.items() if v[1]}}


def dedup(work: Path, bands: int, rows: int, datasketch: bool) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from qwen25.data.pipeline.dedup import DedupConfig, WordSplitter, minhash_config
    from qwen25.data.pipeline.records import jsonl_adapter, jsonl_reader_adapter

    records = list(read_jsonl(work / "planted" / "train.jsonl"))
    cfg = DedupConfig(buckets=bands, hashes_per_bucket=rows)
    mh = minhash_config(cfg)
    t0 = time.perf_counter()
    shingles = dict(zip([r["id"] for r in records], shingle_sets([r["text"] for r in records], cfg.ngrams)))
    print(f"shingles for the quality check: {time.perf_counter() - t0:.1f}s")

    d = work / "dedup-datatrove"
    shutil.rmtree(d, ignore_errors=True)
    tasks = 4
    inp = d / "input"
    inp.mkdir(parents=True)
    for r in range(tasks):
        write_jsonl(inp / f"{r:05d}.jsonl", records[r::tasks])
    reader = lambda: JsonlReader(str(inp), adapter=jsonl_reader_adapter, compression=None)  # noqa: E731
    t0 = time.perf_counter()
    for name, pipeline, n in [
        ("sig", [reader(), MinhashDedupSignature(str(d / "sigs"), config=mh, language=WordSplitter())], tasks),
        ("buckets", [MinhashDedupBuckets(str(d / "sigs"), str(d / "buckets"), config=mh)], cfg.buckets),
        ("cluster", [MinhashDedupCluster(str(d / "buckets"), str(d / "remove"), config=mh)], 1),
        ("filter", [reader(), MinhashDedupFilter(str(d / "remove"),
                                                 exclusion_writer=JsonlWriter(str(d / "removed"), adapter=jsonl_adapter,
                                                                              compression=None))], tasks)]:
        LocalPipelineExecutor(pipeline, tasks=n, workers=1, logging_dir=str(d / "logs" / name)).run()
    datatrove_s = time.perf_counter() - t0
    removed_dt = {json.loads(ln)["id"] for p in (d / "removed").glob("*.jsonl") for ln in p.read_text().splitlines()}

    result = {"machine": machine(), "docs": len(records), "config": f"{cfg.ngrams}-grams, {cfg.buckets} bands x "
              f"{cfg.hashes_per_bucket} rows (threshold {cfg.threshold():.2f})",
              "datatrove": {"seconds": datatrove_s, "tasks": tasks, **dedup_quality(records, removed_dt, shingles)}}
    if datasketch:
        result["datasketch"] = datasketch_dedup(records, cfg, shingles)
    print(json.dumps(result, indent=2))
    with (work / "dedup.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def datasketch_dedup(records: list[dict], cfg, shingles: dict[str, set[str]]) -> dict:
    """The same shingles into datasketch's MinHash and an in-memory LSH index (pip install datasketch==2.0.0)."""
    from datasketch import MinHash, MinHashLSH
    from datatrove.utils.text import TextNormConfig, simplify_text

    from qwen25.data.pipeline.dedup import WordSplitter

    t0 = time.perf_counter()
    norm, split = TextNormConfig(norm_numbers=False), WordSplitter()
    lsh = MinHashLSH(num_perm=cfg.buckets * cfg.hashes_per_bucket, params=(cfg.buckets, cfg.hashes_per_bucket))
    removed_ds = set()
    for r in records:
        words = split.word_tokenize(simplify_text(r["text"], norm))
        grams = [" ".join(words[i:i + cfg.ngrams]).encode() for i in range(max(len(words) - cfg.ngrams + 1, 1))]
        m = MinHash(num_perm=cfg.buckets * cfg.hashes_per_bucket, seed=cfg.seed)
        m.update_batch(grams)
        if lsh.query(m):
            removed_ds.add(r["id"])
        else:
            lsh.insert(r["id"], m)
    return {"seconds": time.perf_counter() - t0, **dedup_quality(records, removed_ds, shingles)}


# ---- removal: the whole pipeline, precision and recall per step -----------------------------------------------

def removal(work: Path, labels: str, window: float) -> dict:
    from qwen25.data.pipeline.recipe import load_data_recipe
    from qwen25.data.pipeline.runner import run_data_pipeline

    recipe = load_data_recipe(ROOT / "recipes" / "data-tiny.toml", [f"quality.labels={labels}"])
    out = work / ("filtered" if window else "filtered-whole-documents")
    decont = Decontamination(f"report LCS rule (bench), window {window}", benchmark_ids, ReportRule(window),
                             OfficialTokens())
    t0 = time.perf_counter()
    summary = run_data_pipeline(recipe, work / "planted", out, decont)
    seconds = time.perf_counter() - t0
    records = {r["id"]: r for split in ("train", "heldout") for r in read_jsonl(work / "planted" / f"{split}.jsonl")}
    copies_of = {r["planted_from"] for r in records.values() if "planted_from" in r}
    reaching = set(records)
    rows = []
    for step in REMOVAL_STEPS:
        removed = {json.loads(ln)["id"] for p in (out / "work" / "removed" / step).glob("*.jsonl")
                   for ln in p.read_text().splitlines()}
        planted = {i for i in removed if records[i].get("planted")}
        dedup_step = step in ("exact_dedup", "near_dedup")
        pair_members = {i for i in removed if i in copies_of} if dedup_step else set()
        target = TARGET_KINDS[step]
        if dedup_step:  # a planted copy is a target while it and its original both reach the step; caught: one goes
            target_reaching = {i for i in reaching if records[i].get("planted") in target
                               and records[i]["planted_from"] in reaching}
            caught = {i for i in target_reaching if i in removed or records[i]["planted_from"] in removed}
        else:
            target_reaching = {i for i in reaching if records[i].get("planted") in target}
            caught = {i for i in removed if records[i].get("planted") in target}
        correct = planted | pair_members
        real = removed - correct
        row = {"step": step, "in": len(reaching), "removed": len(removed), "planted_removed": len(planted),
               "originals_of_copies_removed": len(pair_members), "real_removed": len(real),
               "precision": len(correct) / len(removed) if removed else None, "target_kinds": list(target),
               "target_reaching": len(target_reaching),
               "recall": len(caught) / len(target_reaching) if target_reaching else None,
               "real_examples": [records[i]["text"][:160] for i in sorted(real)[:3]]}
        if dedup_step and real:  # real documents removed as copies of other real documents: are they?
            kept = sorted(reaching - removed)
            sets = dict(zip([*sorted(real), *kept], shingle_sets([records[i]["text"] for i in [*sorted(real), *kept]],
                                                                 recipe.dedup.ngrams)))
            confirmed = dedup_quality([], real, {i: sets[i] for i in [*real, *kept]}, kept)["confirmed_similar"]
            row["real_confirmed_similar"] = confirmed
            row["precision_counting_real_copies"] = (len(correct) + confirmed) / len(removed)
        rows.append(row)
        reaching -= removed
    overall = {}
    for kind in KINDS:
        ids = {i for i, r in records.items() if r.get("planted") == kind}
        gone = ids - reaching
        if kind in ("exact_duplicate", "near_duplicate"):  # a pair is resolved when either member went
            gone = {i for i in ids if i not in reaching or records[i]["planted_from"] not in reaching}
        overall[kind] = {"planted": len(ids), "removed": len(gone)}
    alone = quality_alone(list(read_jsonl(work / "planted" / "train.jsonl")), out / "work" / "student" / "student.npz", recipe.quality)
    print("quality step alone on every planted training document:", json.dumps(alone))
    result = {"machine": machine(), "seconds": seconds, "timings_s": summary["timings_s"], "steps": rows,
              "overall": overall, "quality_alone": alone, "window": window, "student": summary.get("student"), "mixture": summary.get("mixture"),
              "output_docs": summary["output_docs"]}
    print("| step | in | removed | planted | originals of copies | real | precision | targets reaching | recall |")
    for r in rows:
        print(f"| {r['step']} | {r['in']} | {r['removed']} | {r['planted_removed']} | {r['originals_of_copies_removed']}"
              f" | {r['real_removed']} | {r['precision'] if r['precision'] is None else round(r['precision'], 3)} | "
              f"{r['target_reaching']} | {r['recall'] if r['recall'] is None else round(r['recall'], 3)} |")
    print(json.dumps(overall))
    name = "removal.json" if window else "removal-whole-documents.json"
    atomic_write_text(work / name, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def quality_alone(train: list[dict], student_path: Path, cfg) -> dict:
    """The distilled quality score as the only filter: precision and recall of removing the planted junk kinds
    (templated, boilerplate, symbols, benchmark) from all training documents (in the pipeline the heuristics
    take those first, so the step itself sees none)."""
    from qwen25.data.pipeline.classifier import Student

    student = Student.load(student_path)
    junk_kinds = ("templated", "boilerplate", "symbols", "benchmark")
    scores = [cfg.combined(p.scores) for p in student.predict([r["text"] for r in train])]
    junk = [r.get("planted") in junk_kinds for r in train]
    removed = [s < cfg.min_score for s in scores]
    tp = sum(a and b for a, b in zip(junk, removed))
    order = sorted(range(len(train)), key=lambda i: scores[i])  # AUC: junk ranked below real
    n_junk, n_real = sum(junk), len(junk) - sum(junk)
    rank_sum = sum(r + 1 for r, i in enumerate(order) if junk[i])
    auc = 1 - (rank_sum - n_junk * (n_junk + 1) / 2) / (n_junk * n_real) if n_junk and n_real else None
    return {"docs": len(train), "junk": n_junk, "removed": sum(removed), "junk_removed": tp,
            "precision": tp / sum(removed) if any(removed) else None, "recall": tp / n_junk if n_junk else None,
            "auc_junk_below_real": auc, "min_score": cfg.min_score}


# ---- classifiers: the student vs a small transformer with a score head ----------------------------------------

def classifiers(work: Path, labels_path: str, model_dir: str) -> dict:
    import torch

    from qwen25.data.pipeline.classifier import fit_student, label_targets, torch_threads
    from qwen25.data.pipeline.quality import agreement, is_agreement_holdout
    from qwen25.data.pipeline.recipe import load_data_recipe
    from qwen25.data.pipeline.teacher import DIMENSIONS, TOPICS, read_labels
    from qwen25.model import from_pretrained
    from qwen25.tokenizer import load_tokenizer

    labels = read_labels(labels_path)
    texts = {}
    for r in read_jsonl(work / "label_input.jsonl"):
        h = content_hash(r["text"])
        if h in labels:
            texts.setdefault(h, r["text"])
    found = sorted(texts)
    held = [h for h in found if is_agreement_holdout(h, 1)]
    train = [h for h in found if not is_agreement_holdout(h, 1)]
    cfg = load_data_recipe(ROOT / "recipes" / "data-tiny.toml").quality
    result = {"machine": machine(), "labels": labels_path, "train": len(train), "heldout": len(held)}
    timed = [lab["seconds"] for lab in labels.values() if "seconds" in lab]
    result["teacher_seconds_per_doc"] = sum(timed) / len(timed) if timed else None

    t0 = time.perf_counter()
    student = fit_student([texts[h] for h in train], [labels[h] for h in train], epochs=cfg.epochs)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = student.predict([texts[h] for h in held])
    per_doc = (time.perf_counter() - t0) / len(held)
    result["hashed_linear"] = {"fit_seconds": fit_s, "seconds_per_doc": per_doc,
                               **agreement(preds, [labels[h] for h in held], cfg)}

    tok = load_tokenizer(model_dir)
    model = from_pretrained(model_dir, dtype="float32").eval()

    @torch.no_grad()
    def embed(batch: list[str]) -> torch.Tensor:
        out = []
        for text in batch:
            ids = torch.tensor([tok.encode_ordinary(text)[:256] or [tok.endoftext_id]])
            h, _ = model.model(ids)
            out.append(h[0].mean(0))
        return torch.stack(out)

    with torch_threads(1):
        t0 = time.perf_counter()
        x_train = embed([texts[h] for h in train])
        t_embed = time.perf_counter() - t0
        scores, topics = label_targets([labels[h] for h in train])
        mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-4)
        z = torch.cat([(x_train - mean) / std, torch.ones(len(train), 1)], 1)
        # score head: ridge regression on the pooled hidden states; topic head: softmax regression
        ridge = torch.linalg.solve(z.T @ z + 1.0 * torch.eye(z.shape[1]), z.T @ scores)
        w = torch.zeros(z.shape[1], len(TOPICS), requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.05)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(z @ w, topics) + 1e-3 * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        x_held = embed([texts[h] for h in held])
        zh = torch.cat([(x_held - mean) / std, torch.ones(len(held), 1)], 1)
        s_pred = (zh @ ridge).clamp(1, 5)
        t_pred = torch.softmax(zh @ w.detach(), -1)
        per_doc_tf = (time.perf_counter() - t0) / len(held)

    class Pred:
        def __init__(self, s, t):
            self.scores = dict(zip(DIMENSIONS, s.tolist()))
            self.topic_probs = dict(zip(TOPICS, t.tolist()))
            self.topic = max(self.topic_probs, key=self.topic_probs.get)

    n_params = sum(p.numel() for p in model.parameters())
    result["small_transformer_score_head"] = {
        "model": model_dir, "parameters": n_params, "embed_train_seconds": t_embed, "seconds_per_doc": per_doc_tf,
        **agreement([Pred(s, t) for s, t in zip(s_pred, t_pred)], [labels[h] for h in held], cfg)}
    for name in ("hashed_linear", "small_transformer_score_head"):
        r = result[name]
        speed = result["teacher_seconds_per_doc"] / r["seconds_per_doc"] if result["teacher_seconds_per_doc"] else 0
        r["speedup_vs_teacher"] = speed
        print(f"{name}: keep {r['keep_agreement']:.3f} (chance {r['keep_chance']:.3f}), topic {r['topic_agreement']:.3f}"
              f" (chance {r['topic_chance']:.3f}), r {r['score_pearson']:.3f}, {1e3 * r['seconds_per_doc']:.2f} ms/doc,"
              f" {speed:,.0f}x the teacher")
    atomic_write_text(work / "classifiers.json", json.dumps(result, indent=2) + "\n")
    return result


# ---- ablation: tiny pretraining on raw vs filtered at equal tokens --------------------------------------------

ABLATION_OVERRIDES = ["stages.0.tokens=600000", "stages.1.tokens=150000", "train.eval_every=1000"]


def heldout_loss(model_dir: Path, tok_dir: Path, heldout: Path, seq_len: int = 256) -> dict:
    """Mean next-token loss (nats) and bits per byte over every token of the held-out documents, in windows."""
    import torch

    from qwen25.model import from_pretrained
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    model = from_pretrained(model_dir, dtype="float32").eval()
    by_domain: dict[str, list[int]] = {}
    n_bytes: Counter = Counter()
    for r in read_jsonl(heldout):
        by_domain.setdefault(r["domain"], []).extend(tok.encode_ordinary(r["text"]) + [tok.endoftext_id])
        n_bytes[r["domain"]] += len(r["text"].encode()) + 1
    total_nats, total_tokens, out = 0.0, 0, {}
    with torch.no_grad():
        for domain, ids in sorted(by_domain.items()):
            nats, count = 0.0, 0
            for i in range(0, len(ids) - 1, seq_len):
                x = torch.tensor([ids[i:i + seq_len + 1]])
                if x.shape[1] < 2:
                    continue
                logits = model(x[:, :-1]).logits
                nats += float(torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
                count += x.shape[1] - 1
            out[domain] = {"loss": nats / count, "bpb": nats / math.log(2) / n_bytes[domain]}
            total_nats += nats
            total_tokens += count
    return {"loss": total_nats / total_tokens, "bpb": total_nats / math.log(2) / sum(n_bytes.values()),
            "tokens": total_tokens, "by_domain": out}


def ablation(work: Path, only: str = "") -> dict:
    """Both runs, or `only` one of them (two processes can run them side by side; the second to finish writes
    ablation.json)."""
    from qwen25.tokenizer.train import train_bbpe

    tok_dir = work / "ablation" / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        # one tokenizer for both runs, from the real corpus alone (neither the junk nor the filter's choice)
        texts = [r["text"] for r in read_jsonl(work / "corpus" / "train.jsonl")]
        random.Random(0).shuffle(texts)
        size, chosen = 0, []
        for t in texts:
            chosen.append(t)
            size += len(t.encode())
            if size > 4_000_000:
                break
        train_bbpe(chosen, 8192, show_progress=False).save(tok_dir)
    clean = work / "ablation" / "clean_heldout"
    clean.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "corpus" / "heldout.jsonl", clean / "heldout.jsonl")
    result = {"machine": machine(), "overrides": ABLATION_OVERRIDES}
    for name, train in (("raw", work / "planted" / "train.jsonl"), ("filtered", work / "filtered" / "train.jsonl")):
        if only and name != only:
            continue
        corpus = work / "ablation" / f"{name}-corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        shutil.copy(train, corpus / "train.jsonl")
        shutil.copy(work / "corpus" / "heldout.jsonl", corpus / "heldout.jsonl")
        run_dir = work / "ablation" / f"run-{name}"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "qwen25.cli", "pretrain", "run", "--recipe", str(ROOT / "recipes" / "tiny.toml"),
               "--fresh", "--set", f"run_dir={run_dir}", "--set", f"name=ablation-{name}",
               "--set", f"data.corpus_dir={corpus}", "--set", "data.pipeline=", "--set", f"tokenizer.path={tok_dir}"]
        for o in ABLATION_OVERRIDES:
            cmd += ["--set", o]
        subprocess.run(cmd, check=True, cwd=ROOT)
        train_docs = sum(1 for _ in read_jsonl(corpus / "train.jsonl"))
        result[name] = {"train_docs": train_docs, "seconds": time.perf_counter() - t0,
                        "heldout": heldout_loss(run_dir / "hf", tok_dir, clean / "heldout.jsonl")}
        print(name, json.dumps(result[name]))
        atomic_write_text(work / f"ablation-{name}.json",
                          json.dumps({"machine": result["machine"], **result[name]}, indent=2) + "\n")
    parts = {name: work / f"ablation-{name}.json" for name in ("raw", "filtered")}
    if all(p.is_file() for p in parts.values()):
        result.update({name: json.loads(p.read_text()) for name, p in parts.items()})
        atomic_write_text(work / "ablation.json", json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["plant", "dedup", "removal", "classifiers", "ablation"])
    p.add_argument("--work", default="runs/bench-data")
    p.add_argument("--labels", default="data/labels/tiny-qwen2.5-coder-0.5b-instruct.jsonl")
    p.add_argument("--model", default="runs/bench-data/ablation/run-filtered/hf",
                   help="small qwen25 model for the score-head comparison")
    p.add_argument("--only", choices=["raw", "filtered"], help="ablation: this run alone")
    p.add_argument("--window", type=float, default=2.0,
                   help="removal: apply the report's LCS rule to training windows of this many test-item lengths "
                        "(0: whole documents)")
    p.add_argument("--bands", type=int, default=14, help="dedup: MinHash LSH bands")
    p.add_argument("--rows", type=int, default=8, help="dedup: hashes per band")
    p.add_argument("--datasketch", action="store_true", help="dedup: also run datasketch (pip install datasketch)")
    args = p.parse_args()
    work = Path(args.work)
    if args.what == "plant":
        plant(work)
    elif args.what == "dedup":
        dedup(work, args.bands, args.rows, args.datasketch)
    elif args.what == "removal":
        removal(work, args.labels, args.window)
    elif args.what == "classifiers":
        classifiers(work, args.labels, args.model)
    else:
        ablation(work, args.only or "")


if __name__ == "__main__":
    main()
