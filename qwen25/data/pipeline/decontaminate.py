"""Decontamination as a pipeline step: drop a training document when the contamination rule flags it against
any test sequence (report §5 gives the rule: token LCS >= 13 and >= 0.6 of the shorter sequence).

The rule, the test sequences and the tokenizer are parameters, so the evaluation package's rule and its test
sets plug in unchanged. Everything passed in must pickle (top-level functions, `functools.partial`, objects of
module-level classes): the local executor runs tasks in worker processes and Slurm/Ray ship the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

ContaminationRule = Callable[[Sequence[int], Sequence[int]], bool]


class Decontaminate(BaseFilter):
    """`contaminated(train_ids, test_ids)` decides; `test_sequences()` yields the test sets' token sequences;
    `tokenize(text)` gives a document's ids in the same vocabulary. The reason records the first test hit."""

    name = "qwen25 decontamination"

    def __init__(self, test_sequences: Callable[[], Iterable[Sequence[int]]], contaminated: ContaminationRule,
                 tokenize: Callable[[str], Sequence[int]], exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.test_sequences, self.contaminated, self.tokenize = test_sequences, contaminated, tokenize
        self._tests: list[Sequence[int]] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._tests is None:
            self._tests = [list(t) for t in self.test_sequences()]
        ids = list(self.tokenize(doc.text))
        for i, test in enumerate(self._tests):
            if self.contaminated(ids, test):
                doc.metadata["contaminated_by"] = i
                return False, "contaminated"
        return True
