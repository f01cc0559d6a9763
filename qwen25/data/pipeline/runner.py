"""The data pipeline as a chain of datatrove stages, run by the local executor here and by the Slurm or Ray
executors elsewhere (the same stages; `recipe.executor.kind` picks).

    shard inputs (driver) -> distil the student (1 task) -> heuristics + exact-dedup signatures -> find exact
    duplicates (1 task) -> exact filter + MinHash signatures -> MinHash buckets -> clusters (1 task)
    -> MinHash filter + decontamination + student scores + quality filter + topic counts -> rebalance
    -> collect (1 task)

Every stage keeps datatrove's per-task completion markers in `work/logs/<stage>/completions`, and every task
rewrites its own output file from the start, so a killed run restarts where it stopped: finished tasks and stages
are skipped, an unfinished task is redone and its output replaced, never appended to. A run whose settings differ
from the work directory's (recipe, inputs, decontamination) starts over.

Removed documents are kept in `work/removed/<step>/` (datatrove exclusion writers) for the report's counts and
examples and for precision/recall against planted junk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                              MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.logging import setup_default_logger

from qwen25.data.pipeline.decontaminate import ContaminationRule, Decontaminate
from qwen25.data.pipeline.dedup import WordSplitter, exact_config, minhash_config
from qwen25.data.pipeline.heuristics import HeuristicFilter
from qwen25.data.pipeline.mixture import Rebalance, TopicCounter, merge_counts
from qwen25.data.pipeline.quality import DistillStudent, QualityFilter, ScoreDocuments
from qwen25.data.pipeline.recipe import DataRecipe
from qwen25.data.pipeline.records import jsonl_adapter, jsonl_reader_adapter, to_document
from qwen25.io import atomic_path, atomic_write_text, iter_jsonl_lines, sha256_file

REMOVAL_STEPS = ("heuristics", "exact_dedup", "near_dedup", "decontamination", "quality")
SPLITS = ("train", "heldout")


@dataclass
class Decontamination:
    """The evaluation package's rule and test sets; `name` identifies them in the run's settings."""

    name: str
    test_sequences: Callable[[], Iterable[Sequence[int]]]
    contaminated: ContaminationRule
    tokenize: Callable[[str], Sequence[int]]

    def identity(self) -> dict:
        digest = hashlib.sha256()
        for seq in self.test_sequences():
            digest.update(json.dumps(list(seq)).encode())
        return {"name": self.name, "test_sha256": digest.hexdigest()}


@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int


def _reader(folder: Path) -> JsonlReader:
    return JsonlReader(str(folder), adapter=jsonl_reader_adapter, compression=None, glob_pattern="*.jsonl")


def _writer(folder: Path) -> JsonlWriter:
    """Uncompressed: intermediate files are read once or twice, and gzip costs more CPU than the disk it saves."""
    return JsonlWriter(str(folder), adapter=jsonl_adapter, compression=None)


def _input_files(corpus_dir: Path, recipe: DataRecipe) -> list[tuple[Path, str]]:
    files = []
    for split in SPLITS:
        path = corpus_dir / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the data pipeline needs {' and '.join(f'{s}.jsonl' for s in SPLITS)} "
                                    f"in {corpus_dir}")
        files.append((path, split))
    return files + [(Path(p), "train") for p in recipe.extra_inputs]


def shard_inputs(files: list[tuple[Path, str]], folder: Path, tasks: int) -> dict[str, int]:
    """Records from every input file, checked and tagged with their split, dealt round-robin into `tasks` JSONL
    files (datatrove gives task r the r-th file)."""
    counts = {split: 0 for split in SPLITS}
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(folder / f"{r:05d}.jsonl")) for r in range(tasks)]
        outs = [stack.enter_context(t.open("w", encoding="utf-8")) for t in tmps]
        n = 0
        for path, split in files:
            for line_no, obj in iter_jsonl_lines(path):
                if isinstance(obj, dict) and "id" not in obj:
                    obj = {**obj, "id": f"{path.stem}/{line_no}"}
                doc = to_document(obj, f"{path}:{line_no}")
                record = {"text": doc.text, "id": doc.id, **doc.metadata, "split": split}
                record.setdefault("domain", "")
                outs[n % tasks].write(json.dumps(record, ensure_ascii=False) + "\n")
                counts[split] += 1
                n += 1
    return counts


def build_stages(recipe: DataRecipe, work: Path, out_dir: Path, corpus_dir: Path,
                 decontamination: Decontamination | None = None) -> list[Stage]:
    """The stages in order. Steps that consume documents without passing them on (signatures) end a stage; a
    writer before them keeps what reached them for the next stage."""
    tasks, removed, stages = recipe.executor.tasks, work / "removed", []
    student = work / "student" / "student.npz"
    if recipe.quality.labels:
        stages.append(Stage("distil", [DistillStudent(str(work / "input"), str(student.parent), recipe.quality)], 1))
    first = [_reader(work / "input"), HeuristicFilter(recipe.heuristics, _writer(removed / "heuristics")),
             _writer(work / "filtered")]
    current = work / "filtered"
    if recipe.dedup.exact:
        exact = exact_config()
        stages += [Stage("heuristics+exact_signatures",
                         first + [ExactDedupSignature(str(work / "exact" / "sigs"), config=exact)], tasks),
                   Stage("exact_find", [ExactFindDedups(str(work / "exact" / "sigs"), str(work / "exact" / "dups"),
                                                        config=exact)], 1)]
        second = [_reader(current), ExactDedupFilter(str(work / "exact" / "dups"), config=exact,
                                                     exclusion_writer=_writer(removed / "exact_dedup")),
                  _writer(work / "exact_deduped")]
        current = work / "exact_deduped"
    else:
        stages.append(Stage("heuristics", first, tasks))
        second = [_reader(current)]
    if recipe.dedup.near:
        minhash = minhash_config(recipe.dedup)
        sigs, buckets, remove = (str(work / "minhash" / d) for d in ("sigs", "buckets", "remove"))
        stages += [Stage("exact_filter+minhash_signatures" if recipe.dedup.exact else "minhash_signatures",
                         second + [MinhashDedupSignature(sigs, config=minhash, language=WordSplitter())], tasks),
                   Stage("minhash_buckets", [MinhashDedupBuckets(sigs, buckets, config=minhash)], recipe.dedup.buckets),
                   Stage("minhash_cluster", [MinhashDedupCluster(buckets, remove, config=minhash)], 1)]
        last = [_reader(current), MinhashDedupFilter(remove, exclusion_writer=_writer(removed / "near_dedup"))]
    else:
        last = second
    if decontamination is not None:
        last.append(Decontaminate(decontamination.test_sequences, decontamination.contaminated,
                                  decontamination.tokenize, _writer(removed / "decontamination")))
    if recipe.quality.labels:
        last += [ScoreDocuments(str(student), recipe.quality),
                 QualityFilter(recipe.quality.min_score, _writer(removed / "quality")),
                 TopicCounter(str(work / "topic_counts"))]
    current = work / "kept"
    stages.append(Stage("filter+score", last + [_writer(current)], tasks))
    if recipe.quality.labels and recipe.mixture.target:
        stages.append(Stage("rebalance", [_reader(current), Rebalance(str(work / "topic_counts"),
                                                                      str(work / "rates.json"), recipe.mixture),
                                          _writer(work / "rebalanced")], tasks))
        current = work / "rebalanced"
    stages.append(Stage("collect", [CollectOutputs(str(current), str(work), str(out_dir), str(corpus_dir))], 1))
    return stages


def _records(folder: Path) -> Iterator[dict]:
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def _example(record: dict, reason: str) -> dict:
    text = record["text"]
    return {"id": record["id"], "source": record.get("source", ""), "reason": reason,
            "text": text[:300] + ("..." if len(text) > 300 else "")}


class CollectOutputs(PipelineStep):
    """One task: the surviving records into `train.jsonl` / `heldout.jsonl`, and `summary.json` (documents in and
    out per step, removal reasons and examples, topic mixture before and after, student agreement)."""

    name = "qwen25 collect"
    type = "📦 - COLLECT"

    def __init__(self, final_folder: str, work: str, out_dir: str, corpus_dir: str) -> None:
        super().__init__()
        self.final, self.work, self.out_dir, self.corpus_dir = Path(final_folder), Path(work), Path(out_dir), \
            Path(corpus_dir)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts = {s: 0 for s in SPLITS}
        after: dict[str, dict[str, int]] = {}
        with atomic_path(self.out_dir / "train.jsonl") as train_tmp, \
                atomic_path(self.out_dir / "heldout.jsonl") as held_tmp, \
                train_tmp.open("w", encoding="utf-8") as train_f, held_tmp.open("w", encoding="utf-8") as held_f:
            for record in _records(self.final):
                split = record.get("split", "train")
                (train_f if split == "train" else held_f).write(json.dumps(record, ensure_ascii=False) + "\n")
                counts[split] += 1
                if split == "train" and "topic" in record:
                    t = after.setdefault(record["topic"], {"docs": 0, "bytes": 0})
                    t["docs"] += 1
                    t["bytes"] += len(record["text"].encode("utf-8"))
        summary = self.summary(counts, after)
        manifest_in = self.corpus_dir / "manifest.json"
        manifest = json.loads(manifest_in.read_text()) if manifest_in.is_file() else {"sources": []}
        manifest["pipeline"] = summary
        # what the corpus now depends on, for steps keyed on the spec (the tokenizer): the pipeline's settings too
        manifest.setdefault("spec", {})["data_pipeline_sha256"] = sha256_file(self.work / "settings.json")
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(self.out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return iter(())

    def summary(self, out_counts: dict[str, int], after: dict) -> dict:
        with open(self.work / "input_counts.json", encoding="utf-8") as f:
            docs_in = sum(json.load(f).values())
        steps = []
        for step in REMOVAL_STEPS:
            folder = self.work / "removed" / step
            if not folder.is_dir():
                continue
            reasons: dict[str, int] = {}
            examples: dict[str, list[dict]] = {}
            for record in _records(folder):
                reason = record.get("filter_reason", step)
                reasons[reason] = reasons.get(reason, 0) + 1
                if len(examples.setdefault(reason, [])) < 3:
                    examples[reason].append(_example(record, reason))
            removed = sum(reasons.values())
            steps.append({"step": step, "in": docs_in, "removed": removed, "out": docs_in - removed,
                          "reasons": reasons, "examples": [e for ex in examples.values() for e in ex]})
            docs_in -= removed
        summary: dict = {"steps": steps, "output_docs": out_counts}
        if (self.work / "topic_counts").is_dir():
            summary["mixture"] = {"before": merge_counts(str(self.work / "topic_counts")), "after": after}
            rates = self.work / "rates.json"
            if rates.is_file():
                summary["mixture"].update({k: v for k, v in json.loads(rates.read_text()).items() if k != "counts"})
        agreement = self.work / "student" / "agreement.json"
        if agreement.is_file():
            summary["student"] = json.loads(agreement.read_text())
        return summary


def _executor(recipe: DataRecipe, stage: Stage, logs: Path, previous):
    kind = recipe.executor.kind
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(recipe.executor.workers, stage.tasks),
                                     logging_dir=str(logs / stage.name))
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=str(logs / stage.name),
                                     job_name=f"qwen25-data-{stage.name}", depends=previous,
                                     **recipe.executor.slurm)
    import ray
    from datatrove.executor import RayPipelineExecutor

    if not ray.is_initialized():  # RAY_ADDRESS joins a cluster; without it, a local Ray with `workers` CPUs
        ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else recipe.executor.workers,
                 include_dashboard=False, log_to_driver=False)
    return RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(recipe.executor.workers, stage.tasks),
                               logging_dir=str(logs / stage.name), depends=previous, **recipe.executor.ray)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """datatrove logs every task to stderr (and to its own log files); send that to `path`: file descriptor 2 for
    the workers this process starts, `sys.stderr` for the loggers datatrove adds here, then its default back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved, 2)
            os.close(saved)
            setup_default_logger()


def _settings(recipe: DataRecipe, files: list[tuple[Path, str]], decontamination: Decontamination | None) -> dict:
    digests = {}
    for path, split in files:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[str(path)] = {"split": split, "sha256": h.hexdigest()}
    labels = sha256_file(Path(recipe.quality.labels)) if recipe.quality.labels else None  # relabelled: start over
    return {"recipe": recipe.to_dict(), "inputs": digests, "labels_sha256": labels,
            "decontamination": decontamination.identity() if decontamination else None}


def run_data_pipeline(recipe: DataRecipe, corpus_dir: str | Path, out_dir: str | Path,
                      decontamination: Decontamination | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the pipeline on `corpus_dir` (train.jsonl + heldout.jsonl records) into `out_dir`.
    Local and Ray runs return the summary; a Slurm run returns after submitting the chain of jobs."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    work = out_dir / "work"
    files = _input_files(corpus_dir, recipe)
    settings = _settings(recipe, files, decontamination)
    settings_path = work / "settings.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        log(f"data pipeline: settings differ from {settings_path}; starting over")
        shutil.rmtree(work)
    if not settings_path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(settings_path, json.dumps(settings, indent=2) + "\n")
    counts_path = work / "input_counts.json"
    if not counts_path.is_file():
        counts = shard_inputs(files, work / "input", recipe.executor.tasks)
        atomic_write_text(counts_path, json.dumps(counts) + "\n")
    stages = build_stages(recipe, work, out_dir, corpus_dir, decontamination)
    logs = work / "logs"
    if recipe.executor.kind == "slurm":
        previous = None
        for stage in stages:
            previous = _executor(recipe, stage, logs, previous)
        previous.run()
        log(f"data pipeline: submitted {len(stages)} Slurm jobs; outputs land in {out_dir}")
        return {"submitted": [s.name for s in stages]}
    timings = {}
    console = logs / "console.log"
    for stage in stages:
        t0 = time.perf_counter()
        try:
            with _stderr_to(console):
                _executor(recipe, stage, logs, None).run()
        except Exception as e:
            tail = console.read_text(errors="replace")[-2000:] if console.is_file() else ""
            raise RuntimeError(f"data pipeline stage '{stage.name}' failed ({e!r}); its log ends:\n{tail}\n"
                               f"(full log: {console})") from e
        timings[stage.name] = round(time.perf_counter() - t0, 2)
    summary = json.loads((out_dir / "summary.json").read_text())
    summary["timings_s"] = timings
    atomic_write_text(work / "timings.json", json.dumps(timings, indent=2) + "\n")
    for step in summary["steps"]:
        log(f"data pipeline: {step['step']:15s} {step['in']:6d} -> {step['out']:6d} docs "
            f"({', '.join(f'{k} {v}' for k, v in step['reasons'].items()) or 'none removed'})")
    log(f"data pipeline: {summary['output_docs']} docs out, stages took {sum(timings.values()):.0f}s -> {out_dir}")
    return summary
