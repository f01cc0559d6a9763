"""Documents as records: `{"text", "id", "source", "domain", "license", "scores", ...}` on disk (JSONL), datatrove
`Document`s in a pipeline, and the content hash that keys the held-out split, exact deduplication and the
teacher's labels.

`domain` is the shard domain (code, en, zh, math: what the pretraining mixture samples by); `topic` (added by
the topic classifier) is what rebalancing works on. Any other field rides along in `metadata`.
"""

from __future__ import annotations

from datatrove.data import Document

from qwen25.data.corpus import content_hash as content_hash  # re-exported: the pipeline's key
from qwen25.data.corpus import is_heldout as is_heldout

RECORD_FIELDS = ("text", "id")  # the rest of a record is the Document's metadata


def to_document(record: dict, where: str = "record") -> Document:
    """A JSONL record as a datatrove Document (`where` names the file and line in errors)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    doc_id = record.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"{where}: field 'id' must be a non-empty string, got {doc_id!r}")
    metadata = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
    metadata.setdefault("scores", {})
    return Document(text=text, id=doc_id, metadata=metadata)


BOOKKEEPING = ("file_path",)  # what datatrove's readers add; it names the reading run's files, not the document


def to_record(doc: Document) -> dict:
    return {"text": doc.text, "id": doc.id, **{k: v for k, v in doc.metadata.items() if k not in BOOKKEEPING}}


def jsonl_adapter(_writer, doc: Document) -> dict:
    """datatrove writer adapter: write our record shape (metadata flattened) instead of its own nesting."""
    return to_record(doc)


def jsonl_reader_adapter(_reader, data: dict, path: str, id_in_file: int | str) -> dict:
    """datatrove reader adapter: our records carry their own id and metadata; check them here so a bad line is
    an error naming the file and line instead of a KeyError deep inside a step."""
    doc = to_document(data, f"{path}: line {int(id_in_file) + 1}")
    return {"text": doc.text, "id": doc.id, "metadata": doc.metadata}
