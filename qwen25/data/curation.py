"""Post-training data by rejection sampling (report §4.1-4.2): sample k responses per query, verify each,
keep verified responses as SFT records and (passing, failing) pairs for DPO, with provenance.

One run directory holds:
- `run.json`: what the samples depend on (queries file hash, generator, k, seed); resuming with other
  settings is refused, so one directory never mixes two configurations;
- `samples.jsonl`: one line per finished query (all k responses and their verdicts), appended and fsynced
  as each query finishes. A killed run resumes after its last complete line; each query samples with a seed
  derived from the run seed and its id, so the resumed file equals an uninterrupted one;
- `sft.jsonl`, `pairs.jsonl`, `summary.md`: rebuilt from samples.jsonl at the end (atomic writes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from qwen25.data.generators import Generator
from qwen25.data.queries import Query, read_queries
from qwen25.io import atomic_write_text, iter_jsonl_lines
from qwen25.verify.choice import verify_choice, verify_true_false
from qwen25.verify.code_tests import extract_code, verify_io, verify_python_asserts
from qwen25.verify.instructions import Constraint, check_constraints
from qwen25.verify.math_answers import verify_math
from qwen25.verify.model_written import VerificationSpec, check_responses
from qwen25.verify.structured import check_json_schema, check_markdown_table
from qwen25.verify.verdict import Verdict

VERIFIERS: dict[str, Callable[[dict, str], Verdict]] = {
    "math": lambda v, r: verify_math(r, v["reference"]),
    "code_asserts": lambda v, r: verify_python_asserts(extract_code(r, "python", v.get("entry_point")), v["tests"]),
    "code_io": lambda v, r: verify_io(extract_code(r, v.get("language", "python")), [tuple(c) for c in v["cases"]],
                                      v.get("language", "python")),
    "instructions": lambda v, r: check_constraints(r, [Constraint(c["rule"], c["params"]) for c in v["constraints"]]),
    "json_schema": lambda v, r: check_json_schema(r, v["schema"]),
    "table": lambda v, r: check_markdown_table(r, v["columns"], v.get("min_rows", 1), v.get("max_rows")),
    "choice": lambda v, r: verify_choice(r, v["gold"], v.get("options", "ABCD")),
    "true_false": lambda v, r: verify_true_false(r, v["gold"]),
    "model_written": lambda v, r: check_responses(VerificationSpec.from_dict(v["spec"]), [r])[0],
}


def verify_response(query: Query, response: str) -> Verdict:
    kind = query.verifier.get("kind")
    if kind not in VERIFIERS:
        raise ValueError(f"query {query.id}: unknown verifier kind {kind!r}; known: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[kind](query.verifier, response)


def query_seed(seed: int, query_id: str) -> int:
    """A per-query sampling seed that does not depend on which queries ran before."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{query_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def _read_done(path: Path) -> dict[str, dict]:
    """Finished queries in samples.jsonl; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    return {obj["query_id"]: obj for _, obj in iter_jsonl_lines(path)}


def _check_run(out_dir: Path, settings: dict) -> None:
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ValueError(f"{path}: this run directory was made with other settings ({', '.join(changed)} "
                             f"differ); use a new --out directory")
    else:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def sample_and_verify(queries: Sequence[Query], generator: Generator, out_dir: str | Path, k: int, seed: int,
                      queries_hash: str, workers: int | None = None, progress: bool = True) -> list[dict]:
    """Sample k responses per query (resuming after the last finished one) and verify them; returns the
    records of all queries in query order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run(out_dir, {"queries_sha256": queries_hash, "generator": generator.name, "k": k, "seed": seed})
    samples_path = out_dir / "samples.jsonl"
    done = _read_done(samples_path)
    todo = [q for q in queries if q.id not in done]
    with samples_path.open("a", encoding="utf-8") as f, ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for query in tqdm(todo, desc="queries", disable=not progress, initial=len(queries) - len(todo),
                          total=len(queries)):
            sample_seed = query_seed(seed, query.id)
            responses = generator([query.messages], k, sample_seed)[0]
            verdicts = list(pool.map(lambda r: verify_response(query, r), responses))
            record = {"query_id": query.id, "family": query.family, "source": query.source,
                      "verifier": query.verifier["kind"], "generator": generator.name, "seed": sample_seed,
                      "responses": [{"text": r, "verdict": v.to_dict()} for r, v in zip(responses, verdicts)]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[query.id] = record
    return [done[q.id] for q in queries]


def _provenance(record: dict, index: int) -> dict:
    verdict = record["responses"][index]["verdict"]
    return {"query_id": record["query_id"], "family": record["family"], "source": record["source"],
            "verifier": record["verifier"], "generator": record["generator"], "seed": record["seed"],
            "sample": index, "verdict": {"passed": verdict["passed"], "status": verdict["status"],
                                         "reason": verdict["reason"]}}


def sft_records(queries: Sequence[Query], records: Sequence[dict], per_query: int = 1) -> list[dict]:
    """Up to `per_query` verified responses per query (the first ones, distinct texts), as chat records."""
    out = []
    for query, record in zip(queries, records):
        seen: set[str] = set()
        for i, response in enumerate(record["responses"]):
            if response["verdict"]["passed"] and response["text"] not in seen and len(seen) < per_query:
                seen.add(response["text"])
                out.append({"messages": query.messages + [{"role": "assistant", "content": response["text"]}],
                            "provenance": _provenance(record, i)})
    return out


def preference_pairs(queries: Sequence[Query], records: Sequence[dict], per_query: int = 1) -> list[dict]:
    """Up to `per_query` (passing, failing) response pairs per query: pass = chosen, fail = rejected."""
    out = []
    for query, record in zip(queries, records):
        passed = [i for i, r in enumerate(record["responses"]) if r["verdict"]["passed"]]
        failed = [i for i, r in enumerate(record["responses"]) if not r["verdict"]["passed"]]
        for chosen, rejected in list(zip(passed, failed))[:per_query]:
            out.append({"prompt": query.messages, "chosen": record["responses"][chosen]["text"],
                        "rejected": record["responses"][rejected]["text"],
                        "provenance": {"chosen": _provenance(record, chosen), "rejected": _provenance(record, rejected)}})
    return out


@dataclass
class FamilySummary:
    queries: int = 0
    samples: int = 0
    passed: int = 0
    sft: int = 0
    pairs: int = 0


def summarize(records: Sequence[dict], sft: Sequence[dict], pairs: Sequence[dict]) -> str:
    """A markdown table per family: queries, samples, pass rate, kept SFT records, preference pairs."""
    table: dict[str, FamilySummary] = {}
    for record in records:
        s = table.setdefault(record["family"], FamilySummary())
        s.queries += 1
        s.samples += len(record["responses"])
        s.passed += sum(r["verdict"]["passed"] for r in record["responses"])
    for item in sft:
        table[item["provenance"]["family"]].sft += 1
    for item in pairs:
        table[item["provenance"]["chosen"]["family"]].pairs += 1
    total = FamilySummary(*(sum(getattr(s, f) for s in table.values()) for f in FamilySummary.__dataclass_fields__))
    lines = ["| family | queries | samples | pass rate | SFT kept | pairs |", "|---|---|---|---|---|---|"]
    for name, s in sorted(table.items()) + [("all", total)]:
        rate = f"{100 * s.passed / s.samples:.1f}%" if s.samples else "-"
        lines.append(f"| {name} | {s.queries} | {s.samples} | {rate} | {s.sft} | {s.pairs} |")
    return "\n".join(lines) + "\n"


def curate(queries_path: str | Path, generator: Generator, out_dir: str | Path, k: int = 4, seed: int = 0,
           sft_per_query: int = 1, pairs_per_query: int = 1, workers: int | None = None,
           progress: bool = True) -> str:
    """The whole pipeline for one run directory: samples, then sft.jsonl, pairs.jsonl and summary.md (both
    outputs come from the same samples, so building one and then the other samples once)."""
    queries_path, out_dir = Path(queries_path), Path(out_dir)
    queries = read_queries(queries_path)
    if not queries:
        raise ValueError(f"{queries_path}: no queries")
    queries_hash = hashlib.sha256(queries_path.read_bytes()).hexdigest()
    records = sample_and_verify(queries, generator, out_dir, k, seed, queries_hash, workers, progress)
    sft = sft_records(queries, records, sft_per_query)
    pairs = preference_pairs(queries, records, pairs_per_query)
    atomic_write_text(out_dir / "sft.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in sft))
    atomic_write_text(out_dir / "pairs.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in pairs))
    summary = summarize(records, sft, pairs)
    atomic_write_text(out_dir / "summary.md", f"# {out_dir}\n\ngenerator: {generator.name}; k={k}, seed={seed}; "
                                              f"queries: {queries_path}\n\n{summary}")
    return summary
