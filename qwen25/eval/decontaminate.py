"""Decontamination by the report's rule (§5, SPEC §4): a training sequence s_t is dropped when some test
sequence s_e has LCS(s_t, s_e) >= 13 and LCS(s_t, s_e) >= 0.6 * min(|s_t|, |s_e|), on token ids, where LCS is
the longest common subsequence (not substring). 0.6 is applied exactly, as 5 * LCS >= 3 * min(|s_t|, |s_e|).

Fast path, and why it is sound (it never skips a pair that meets the rule):
  1. LCS <= min(|s_t|, |s_e|), so a pair whose shorter side is below the needed length cannot meet it.
  2. Every matched pair of a common subsequence pairs equal tokens, so LCS <= sum over tokens t of
     min(count of t in s_t, count of t in s_e) (the size of the multiset intersection). A test sequence whose
     intersection with a document is below the needed length is skipped; the intersections of a document with
     all test sequences come from one inverted index in a few numpy operations.
  3. The pairs left are decided by the exact LCS length (rapidfuzz's bit-parallel LCSseq, on int lists).
`contaminated` states the rule for one pair; `lcs_length_reference` is the textbook dynamic program the tests
check the fast path against.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rapidfuzz.distance import LCSseq

from qwen25.io import atomic_path, atomic_write_text, iter_jsonl_lines

MIN_LCS = 13


def needed_lcs(len_a: int, len_b: int) -> int:
    """The least LCS length that meets the rule for sequences of these lengths: max(13, ceil(0.6 * min))."""
    return max(MIN_LCS, -(-3 * min(len_a, len_b) // 5))


def meets_rule(lcs: int, len_a: int, len_b: int) -> bool:
    return lcs >= MIN_LCS and 5 * lcs >= 3 * min(len_a, len_b)


def lcs_length_reference(a: Sequence[int], b: Sequence[int]) -> int:
    """Longest common subsequence by the O(|a| |b|) dynamic program (the reference; slow)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Exact LCS length (rapidfuzz LCSseq; Python int lists are its fast input)."""
    return LCSseq.similarity(list(a), list(b))


def multiset_overlap(a: Sequence[int], b: Sequence[int]) -> int:
    """sum_t min(count_a(t), count_b(t)): an upper bound on LCS(a, b)."""
    ca, cb = Counter(a), Counter(b)
    if len(ca) > len(cb):
        ca, cb = cb, ca
    return sum(min(n, cb[t]) for t, n in ca.items())


def contaminated(train_ids: Sequence[int], test_ids: Sequence[int]) -> bool:
    """True when LCS(train, test) >= 13 and >= 0.6 * the shorter length (the report's rule)."""
    need = needed_lcs(len(train_ids), len(test_ids))
    if min(len(train_ids), len(test_ids)) < need or multiset_overlap(train_ids, test_ids) < need:
        return False
    return LCSseq.similarity(list(train_ids), list(test_ids), score_cutoff=need) >= need


class ContaminationIndex:
    """Test sequences with an inverted index (token -> which test sequences hold it, how often)."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.sequences = [list(s) for s in sequences]
        self.lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        postings: dict[int, list[tuple[int, int]]] = {}
        for i, seq in enumerate(self.sequences):
            for token, count in Counter(seq).items():
                postings.setdefault(token, []).append((i, count))
        vocab = max(postings, default=-1) + 1
        self.start = np.zeros(vocab + 1, dtype=np.int64)
        for token, plist in postings.items():
            self.start[token + 1] = len(plist)
        self.start = np.cumsum(self.start)
        self.test = np.empty(self.start[-1], dtype=np.int64)
        self.count = np.empty(self.start[-1], dtype=np.int64)
        for token, plist in postings.items():
            s = self.start[token]
            self.test[s:s + len(plist)] = [i for i, _ in plist]
            self.count[s:s + len(plist)] = [c for _, c in plist]

    def overlaps(self, doc: Sequence[int]) -> np.ndarray:
        """[number of tests]: the multiset intersection size of `doc` with every test sequence."""
        tokens, counts = np.unique(np.asarray(doc, dtype=np.int64), return_counts=True)
        inside = (tokens >= 0) & (tokens < len(self.start) - 1)
        tokens, counts = tokens[inside], counts[inside]
        starts, ends = self.start[tokens], self.start[tokens + 1]
        sizes = ends - starts
        total = int(sizes.sum())
        if total == 0:
            return np.zeros(len(self.sequences), dtype=np.int64)
        # positions of every posting of every doc token, without a Python loop
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes)
        where = offsets + np.arange(total)
        got = np.minimum(self.count[where], np.repeat(counts, sizes))
        return np.bincount(self.test[where], weights=got, minlength=len(self.sequences)).astype(np.int64)

    def matches(self, doc: Sequence[int]) -> list[tuple[int, int]]:
        """(test index, LCS) of every test sequence that meets the rule with `doc`."""
        need = np.maximum(MIN_LCS, -(-3 * np.minimum(len(doc), self.lengths) // 5))
        candidates = np.nonzero((self.overlaps(doc) >= need) & (np.minimum(len(doc), self.lengths) >= need))[0]
        doc_list = list(doc)
        found = []
        for i in candidates.tolist():
            lcs = LCSseq.similarity(self.sequences[i], doc_list, score_cutoff=int(need[i]))
            if lcs >= need[i]:
                found.append((i, lcs))
        return found

    def window_matches(self, doc: Sequence[int], window: int) -> list[tuple[int, int]]:
        """`matches` over training sequences of `window` tokens cut from `doc` every window // 2 tokens (so any
        span of up to window // 2 tokens lies whole inside one of them); the best LCS per test sequence."""
        if window <= 0 or len(doc) <= window:
            return self.matches(doc)
        best: dict[int, int] = {}
        for start in range(0, len(doc) - window // 2, window // 2):
            for i, lcs in self.matches(doc[start:start + window]):
                best[i] = max(best.get(i, 0), lcs)
        return sorted(best.items())


def benchmark_texts(task_names: str) -> list[tuple[str, str, str]]:
    """(task, item id, text) of every item of the named tasks (their own text: question and gold answer, or
    problem and reference solution; no few-shot examples)."""
    from qwen25.eval.tasks import TaskSpec, build_task, parse_task_list

    out = []
    for name, variant in parse_task_list(task_names):
        if name in ("passkey", "ruler"):
            raise ValueError(f"--against: {name} is synthetic; it has no test set to decontaminate against")
        task = build_task(TaskSpec(name, variant))
        out += [(name, item.id, item.text) for item in task.items if item.text]
    return out


def _check_document(record, field: str, path, line_no: int) -> None:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ValueError(f"{path}:{line_no}: a document needs a string field {field!r}")


def decontaminate_file(input_path: str | Path, against: str, out_path: str | Path, tokenizer: str = "qwen2.5",
                       field: str = "text", report_path: str | Path | None = None,
                       log: Callable[[str], None] | None = None, batch: int = 256, window: int = 0) -> dict:
    """Write the documents of `input_path` that no test item of `against` contaminates, and a JSON report
    (per task: documents removed and examples). Returns the report. `window` > 0 applies the rule to training
    sequences of that many tokens cut from each document (a document goes when one of them is contaminated);
    0 applies it to whole documents, where long documents meet it by chance against short test items."""
    from qwen25.tokenizer import load_tokenizer

    if window and window < MIN_LCS:
        raise ValueError(f"--window {window}: a training sequence needs at least {MIN_LCS} tokens to meet the rule "
                         f"(0: whole documents)")
    if not Path(input_path).is_file():
        raise FileNotFoundError(f"{input_path}: no such file (--input)")
    for line_no, record in iter_jsonl_lines(input_path):  # a bad line fails now, not after the index is built
        _check_document(record, field, input_path, line_no)
    tok = load_tokenizer(tokenizer)
    tests = benchmark_texts(against)
    index = ContaminationIndex(tok.encode_batch([text for _, _, text in tests]))
    if log:
        log(f"{len(tests)} test sequences from {against}")
    report_path = Path(report_path) if report_path else Path(out_path).with_suffix(".report.json")
    removed: dict[str, dict] = {}
    docs = kept = 0
    start = time.perf_counter()
    with atomic_path(out_path) as tmp, tmp.open("w", encoding="utf-8") as out:
        pending: list[tuple[int, dict, str]] = []

        def flush() -> None:
            nonlocal kept
            for (line_no, record, line), ids in zip(pending, tok.encode_batch([r[field] for _, r, _ in pending])):
                hits = index.window_matches(ids, window)
                if not hits:
                    out.write(line)
                    kept += 1
                for i, lcs in hits:
                    task, item_id, _ = tests[i]
                    entry = removed.setdefault(task, {"documents": 0, "examples": []})
                    if len(entry["examples"]) < 5:
                        entry["examples"].append({"line": line_no, "item": item_id, "lcs": lcs,
                                                  "document_tokens": len(ids), "test_tokens": len(index.sequences[i])})
                for task in {tests[i][0] for i, _ in hits}:
                    removed[task]["documents"] += 1
            pending.clear()

        for line_no, record in iter_jsonl_lines(input_path):
            _check_document(record, field, input_path, line_no)
            pending.append((line_no, record, json.dumps(record, ensure_ascii=False) + "\n"))
            docs += 1
            if len(pending) == batch:
                flush()
                if log and docs % (batch * 8) == 0:
                    log(f"{docs} documents, {docs - kept} removed, {docs / (time.perf_counter() - start):.1f} docs/s")
        flush()
    seconds = time.perf_counter() - start
    report = {"input": str(input_path), "against": against, "tokenizer": tokenizer, "test_sequences": len(tests),
              "documents": docs, "documents_kept": kept, "documents_removed": docs - kept, "seconds": round(seconds, 2),
              "documents_per_second": docs / seconds if seconds else 0.0, "removed_by_task": removed,
              "rule": "LCS >= 13 and 5 * LCS >= 3 * min(len(sequence), len(test)) on token ids",
              "training_sequence": f"windows of {window} tokens, stride {window // 2}" if window else "whole document",
              "report": str(report_path)}
    atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
