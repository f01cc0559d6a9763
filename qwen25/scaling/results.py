"""The results file of a sweep: one JSON record per finished run, appended by any number of processes.

Appending takes a file lock and rewrites the file atomically (temp file + rename), so a crash never leaves half
a line and two processes never lose each other's records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from qwen25.io import atomic_write_text, iter_jsonl_lines

RECORD_KEYS = ("id", "model", "kind", "params_non_embedding", "params_total", "params_activated_non_embedding",
               "tokens_target", "lr", "batch_tokens", "final_loss", "diverged")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs (processes on one machine, or NFS with locking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: str | Path) -> list[dict]:
    """Every record of a results file; a line that is not a record is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results file (run `qwen25 scaling sweep` first)")
    records = []
    for line_no, record in iter_jsonl_lines(path):
        missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{path}:{line_no}: not a sweep record (missing {', '.join(missing)})")
        records.append(record)
    return records


def append_result(path: Path, record: dict) -> None:
    with file_lock(path.with_name(path.name + ".lock")):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + json.dumps(record) + "\n")


def finished_ids(path: Path) -> set[str]:
    return {r["id"] for r in read_results(path)} if path.is_file() else set()
