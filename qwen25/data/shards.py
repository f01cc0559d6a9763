"""Packed token shards: documents tokenized in worker processes, separated by `<|endoftext|>`, stored as raw
little-endian uint32 files per domain, with a manifest (tokenizer hash, token and document counts per
domain, size and sha256 of every shard).

`ShardSet.open` checks everything before a run starts: a missing, truncated or corrupt shard, or a shard
set made with a different tokenizer, is an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwen25.data.corpus import read_jsonl
from qwen25.io import atomic_path, atomic_write_text
from qwen25.tokenizer import QwenTokenizer, load_tokenizer

MANIFEST = "manifest.json"
DTYPE = np.dtype("<u4")


class ShardError(ValueError):
    """A shard set that cannot be used as it is; the message names the file."""


def tokenizer_hash(tok: QwenTokenizer) -> str:
    """Identity of a tokenizer's behaviour: the library's canonical serialisation of its pipeline."""
    return hashlib.sha256(tok.tok.to_str().encode()).hexdigest()


_worker_tok: QwenTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker_tok = load_tokenizer(tokenizer_dir)
    _worker_tok.encode_ordinary("")  # build the fast encoder (or find why not) before the first chunk


def _encode_chunk(docs: list[tuple[str, str]]) -> list[tuple[str, np.ndarray]]:
    tok = _worker_tok
    eot = tok.endoftext_id
    ids = tok.encode_batch([text for _, text in docs], num_threads=1)
    return [(domain, np.array(d + [eot], dtype=DTYPE)) for (domain, _), d in zip(docs, ids)]


def _chunks(jsonl: Path, size: int) -> Iterator[list[tuple[str, str]]]:
    chunk = []
    for doc in read_jsonl(jsonl):
        chunk.append((doc["domain"], doc["text"]))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    def __init__(self, directory: Path, domain: str, max_tokens: int) -> None:
        self.directory, self.domain, self.max_tokens = directory, domain, max_tokens
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.docs = 0

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        self.docs += 1
        if self.buffered >= self.max_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        data = np.concatenate(self.buffer)
        name = f"{self.domain}/shard-{len(self.shards):05d}.bin"
        with atomic_path(self.directory / name) as tmp:
            data.tofile(tmp)
        self.shards.append({"file": name, "domain": self.domain, "tokens": int(len(data)), "docs": self.docs,
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.buffer, self.buffered, self.docs = [], 0, 0


def build_shards(jsonl: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, workers: int = 2,
                 max_shard_tokens: int = 1 << 24, progress: Callable[[int], None] | None = None) -> dict:
    """Tokenize `jsonl` (documents with "text" and "domain") into per-domain shards under `out_dir`."""
    jsonl, out_dir = Path(jsonl), Path(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    writers: dict[str, _ShardWriter] = {}
    ctx = mp.get_context("spawn")  # no fork of a process holding threads (torch, tokenizers)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool:
        for encoded in pool.imap(_encode_chunk, _chunks(jsonl, 64)):  # imap keeps document order
            for domain, ids in encoded:
                if domain not in writers:
                    writers[domain] = _ShardWriter(out_dir, domain, max_shard_tokens)
                writers[domain].add(ids)
            if progress:
                progress(len(encoded))
    for domain in writers:
        writers[domain].flush()
    shards = [s for w in writers.values() for s in w.shards]
    manifest = {
        "tokenizer_sha256": tokenizer_hash(tok),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.endoftext_id,
        "dtype": "uint32",
        "source": str(jsonl),
        "domains": {d: {"tokens": sum(s["tokens"] for s in w.shards), "docs": sum(s["docs"] for s in w.shards)}
                    for d, w in writers.items()},
        "shards": shards,
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class ShardSet:
    """A verified shard directory: per-domain lists of memory-mapped uint32 arrays."""

    directory: Path
    manifest: dict
    domains: dict[str, list[np.memmap]]

    @classmethod
    def open(cls, directory: str | Path, tokenizer: QwenTokenizer | None = None, verify_hashes: bool = True) -> ShardSet:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise ShardError(f"{path}: no shard manifest here (build shards first)")
        try:
            manifest = json.loads(path.read_text())
            shards = manifest["shards"]
            recorded_hash = manifest["tokenizer_sha256"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ShardError(f"{path}: not a valid shard manifest ({e!r})") from None
        if tokenizer is not None and recorded_hash != tokenizer_hash(tokenizer):
            raise ShardError(f"{path}: these shards were made with a different tokenizer (sha256 "
                             f"{recorded_hash[:12]}..., this run's is {tokenizer_hash(tokenizer)[:12]}...); "
                             "rebuild the shards with this run's tokenizer")
        domains: dict[str, list[np.memmap]] = {}
        for entry in shards:
            file = directory / entry["file"]
            if not file.is_file():
                raise ShardError(f"{file}: shard listed in {MANIFEST} is missing")
            expected = entry["tokens"] * DTYPE.itemsize
            if file.stat().st_size != expected:
                raise ShardError(f"{file}: {file.stat().st_size} bytes, the manifest says {entry['tokens']} tokens "
                                 f"({expected} bytes): the shard is truncated or was overwritten")
            data = np.memmap(file, dtype=DTYPE, mode="r")
            if verify_hashes and hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ShardError(f"{file}: contents do not match the sha256 in {MANIFEST} (corrupt shard)")
            if len(data) and int(data.max()) >= manifest["vocab_size"]:
                raise ShardError(f"{file}: holds token id {int(data.max())} >= vocab size {manifest['vocab_size']}")
            domains.setdefault(entry["domain"], []).append(data)
        return cls(directory, manifest, domains)

    @property
    def eot_id(self) -> int:
        return self.manifest["eot_id"]

    def tokens(self, domain: str) -> int:
        return sum(len(a) for a in self.domains[domain])

