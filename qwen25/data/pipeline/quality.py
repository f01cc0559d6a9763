"""Model-based quality scoring as pipeline steps: distil the student from the teacher's labels (a one-task stage),
score every document with it (quality dimensions, combined score, topic), and drop the low-scoring ones.

Labelled documents are split by content hash: a quarter is held out to measure how often the student agrees with
the teacher, the rest trains the student that then scores the corpus (so the agreement reported is the shipped
model's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.disk_base import DiskWriter

from qwen25.data.pipeline.classifier import FeatureConfig, Student, fit_student
from qwen25.data.pipeline.records import content_hash, jsonl_reader_adapter
from qwen25.data.pipeline.teacher import DIMENSIONS, read_labels
from qwen25.io import atomic_write_text


@dataclass
class QualityConfig:
    labels: str = ""  # teacher labels (JSONL from `qwen25 data label`); empty: no model-based scoring
    weights: dict[str, float] = field(default_factory=lambda: {"quality": 1.0, "educational": 1.0, "clean": 1.0})
    min_score: float = 0.0  # documents whose combined score (weighted mean, 1-5) is below this are dropped
    heldout_quarters: int = 1  # labelled documents held out to measure agreement, in quarters (by content hash)
    min_labels: int = 40  # fewer labelled documents found in the corpus than this is an error
    epochs: int = 60
    batch_size: int = 256

    def check(self) -> None:
        unknown = sorted(set(self.weights) - set(DIMENSIONS))
        if unknown or not any(self.weights.values()) or any(w < 0 for w in self.weights.values()):
            raise ValueError(f"quality.weights must give dimensions of {list(DIMENSIONS)} weights >= 0, not all 0; "
                             f"got {self.weights}")
        if not 0 <= self.heldout_quarters < 4:
            raise ValueError(f"quality.heldout_quarters must be 0..3, got {self.heldout_quarters}")
        if not 0 <= self.min_score <= 5:
            raise ValueError(f"quality.min_score must be in [0, 5], got {self.min_score}")

    def combined(self, scores: dict[str, float]) -> float:
        total = sum(self.weights.values())
        return sum(w * scores[d] for d, w in self.weights.items()) / total


def is_agreement_holdout(digest: str, quarters: int) -> bool:
    return int(digest[-4:], 16) % 4 < quarters


def agreement(student: list, teacher: list[dict], cfg: QualityConfig) -> dict:
    """How often the student's decisions match the teacher's on the same documents, with chance baselines."""
    if not teacher:
        return {"docs": 0}
    t_comb = np.array([cfg.combined(t["scores"]) for t in teacher])
    s_comb = np.array([cfg.combined(s.scores) for s in student])
    t_keep, s_keep = t_comb >= cfg.min_score, s_comb >= cfg.min_score
    t_topic = [max(t["topic_probs"], key=t["topic_probs"].get) for t in teacher]
    s_topic = [s.topic for s in student]
    majority_topic = max(set(t_topic), key=t_topic.count)
    corr = float(np.corrcoef(t_comb, s_comb)[0, 1]) if len(teacher) > 2 and t_comb.std() and s_comb.std() else 0.0
    return {
        "docs": len(teacher),
        "keep_agreement": float((t_keep == s_keep).mean()),
        "keep_chance": float(max(t_keep.mean(), 1 - t_keep.mean())),  # always answering the teacher's majority
        "score_pearson": corr,
        "score_mae": {d: float(np.mean([abs(s.scores[d] - t["scores"][d]) for s, t in zip(student, teacher)]))
                      for d in DIMENSIONS},
        "topic_agreement": float(np.mean([a == b for a, b in zip(s_topic, t_topic)])),
        "topic_chance": t_topic.count(majority_topic) / len(t_topic),
    }


class DistillStudent(PipelineStep):
    """One task: the teacher's labelled texts (from the labels file, else from the corpus by content hash), fit the
    student on three quarters,
    measure agreement on the rest, save the student and `agreement.json` in `output_folder`."""

    name = "qwen25 distil quality/topic student"
    type = "🎓 - DISTIL"

    def __init__(self, corpus_folder: str, output_folder: str, cfg: QualityConfig) -> None:
        super().__init__()
        self.corpus_folder, self.output_folder, self.cfg = corpus_folder, output_folder, cfg

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"{self.name}: runs as one task, got world_size {world_size}")
        labels = read_labels(self.cfg.labels)
        # labels carry their text's beginning; older ones without it are joined with this corpus by content hash
        texts = {h: lab["text_head"] for h, lab in labels.items() if "text_head" in lab}
        if len(texts) < len(labels):
            reader = JsonlReader(self.corpus_folder, adapter=jsonl_reader_adapter, compression=None,
                                 glob_pattern="*.jsonl")
            for doc in reader.run(None, 0, 1):
                digest = content_hash(doc.text)
                if digest in labels:
                    texts.setdefault(digest, doc.text)
        found = sorted(texts)
        if len(found) < self.cfg.min_labels:
            raise ValueError(f"{self.cfg.labels}: only {len(found)} of its {len(labels)} labels have a text (in the "
                             f"file or in this corpus; quality.min_labels is {self.cfg.min_labels}); label this "
                             "corpus with `qwen25 data label`")
        held = [h for h in found if is_agreement_holdout(h, self.cfg.heldout_quarters)]
        train = [h for h in found if not is_agreement_holdout(h, self.cfg.heldout_quarters)]
        t0 = time.perf_counter()
        student = fit_student([texts[h] for h in train], [labels[h] for h in train], FeatureConfig(),
                              epochs=self.cfg.epochs)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictions = student.predict([texts[h] for h in held])
        per_doc = (time.perf_counter() - t0) / max(len(held), 1)
        timed = [lab["seconds"] for lab in labels.values() if "seconds" in lab]
        teacher_per_doc = sum(timed) / len(timed) if timed else None
        report = {"labels": self.cfg.labels, "train_docs": len(train), "fit_seconds": fit_s,
                  "student_seconds_per_doc": per_doc, "teacher_seconds_per_doc": teacher_per_doc,
                  "speedup": teacher_per_doc / per_doc if teacher_per_doc and per_doc else None,
                  "heldout": agreement(predictions, [labels[h] for h in held], self.cfg),
                  "train": agreement(student.predict([texts[h] for h in train]), [labels[h] for h in train], self.cfg)}
        folder = get_datafolder(self.output_folder)
        student.save(folder.resolve_paths("student.npz"))
        atomic_write_text(folder.resolve_paths("agreement.json"), json.dumps(report, indent=2) + "\n")
        return iter(())


class ScoreDocuments(PipelineStep):
    """Adds the student's scores (each dimension and `combined`) and `topic` to every document's metadata."""

    name = "qwen25 quality/topic scores"
    type = "🎯 - SCORER"

    def __init__(self, student_path: str, cfg: QualityConfig) -> None:
        super().__init__()
        self.student_path, self.cfg = student_path, cfg

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        student = Student.load(self.student_path)
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) == self.cfg.batch_size:
                yield from self._score(student, batch)
                batch = []
        yield from self._score(student, batch)

    def _score(self, student: Student, batch: list[Document]):
        with self.track_time("batch"):
            predictions = student.predict([d.text for d in batch])
        for doc, p in zip(batch, predictions):
            scores = {k: round(v, 3) for k, v in p.scores.items()}
            scores["combined"] = round(self.cfg.combined(p.scores), 3)
            doc.metadata["scores"] = {**doc.metadata.get("scores", {}), **scores}
            doc.metadata["topic"] = p.topic
            self.stat_update(f"topic_{p.topic}")
            yield doc


class QualityFilter(BaseFilter):
    """Drops documents whose combined score is below `min_score`."""

    name = "qwen25 quality filter"

    def __init__(self, min_score: float, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.min_score = min_score

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return doc.metadata["scores"]["combined"] >= self.min_score or (False, "low_quality")


