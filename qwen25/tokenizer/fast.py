"""The fast path for ordinary encoding: tiktoken's BPE core (Rust) run on a byte-level BPE tokenizer.json's
own vocabulary, used only where it provably gives the ids the `tokenizers` pipeline gives.

The two libraries merge by different rules. `tokenizers` merges the adjacent pair listed earliest in
`merges`; tiktoken merges the adjacent pair whose concatenation has the lowest rank (its id), and first
looks the whole piece up. With ranks = ids they agree on every input when
  1. the merges' results have strictly increasing ids in merge order (so priority order is rank order and
     each token has exactly one merge), and
  2. running the merges on a token's own bytes gives that token back.
Why: suppose both have made the same merges so far, and tiktoken now joins neighbours u, v into t = u + v.
No symbol ever crossed the edges of t's bytes (u and v tile them), so the merges made inside them are the
first steps of merging t's bytes alone; by (2) those steps end in [t] and pass through one two-symbol state,
whose pair is t's listed merge. So (u, v) is a listed merge, and by (1) it is also the one `tokenizers`
picks next (ties go to the leftmost pair in both). A whole-piece hit is the same by (2).
Checking only (1) is not enough: merges [b+c, a+b, ab+c] satisfy it, yet "abc" is [a, bc] in `tokenizers`
and [abc] in tiktoken. `merge_problem` checks both; a vocabulary that fails keeps the `tokenizers` path.

tiktoken does not normalise. Text that Python's `unicodedata` says is NFC goes to the core as it is; other
text goes through the `tokenizers` NFC normaliser first, so the core sees what the pipeline's regex sees.
(That normaliser's Unicode tables are older than Python's and agree with them on every character they know,
so it leaves Python-NFC text unchanged: tests/test_tokenizer_fast.py checks that precondition.)
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import tiktoken
from tokenizers import normalizers

from qwen25.io import atomic_write_text, cache_dir

CHECK_VERSION = "1"  # bump when `merge_problem` changes, so cached verdicts are recomputed


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def byte_ranks(vocab: dict[str, int]) -> dict[bytes, int]:
    """A byte-level vocabulary ({mapped string: id}) as tiktoken's mergeable ranks ({bytes: id})."""
    to_byte = {ord(c): chr(b) for b, c in bytes_to_unicode().items()}
    to_byte.update({c: "\uffff" for c in range(256) if c not in to_byte})  # unmapped: fails latin-1 below
    ranks = {}
    for token, token_id in vocab.items():
        try:
            ranks[token.translate(to_byte).encode("latin-1")] = token_id
        except UnicodeEncodeError:
            raise ValueError(f"token {token_id} ({token!r}) has a character outside the byte-level alphabet") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"byte 0x{missing[0]:02x} has no token ({len(missing)} of 256 bytes missing)")
    return ranks


def merge_problem(model: dict[str, Any], bpe: Any) -> str | None:
    """Why tiktoken's rank rule could give other ids than this BPE model's merges, or None when it cannot
    (conditions 1 and 2 of the module docstring). `model` is tokenizer.json's "model", `bpe` the loaded
    `tokenizers` model that runs the merges."""
    flags = {"type": "BPE", "dropout": None, "byte_fallback": False, "ignore_merges": False}
    for key, want in flags.items():
        if model.get(key, want) != want:
            return f"model {key} is {model.get(key)!r}, not {want!r}"
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"model {key} is {model[key]!r}"
    vocab = model["vocab"]
    try:
        byte_ranks(vocab)
    except ValueError as e:
        return str(e)
    previous = -1
    for i, merge in enumerate(model["merges"]):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        made = vocab.get(left + right)
        if made is None:
            return f"merge {i} ({left!r} + {right!r}) makes a token that is not in the vocabulary"
        if made <= previous:
            return (f"merge {i} ({left!r} + {right!r}) makes id {made}, not above the previous merge's "
                    f"{previous}: merge order is not id order")
        previous = made
    for token, token_id in vocab.items():
        got = [t.id for t in bpe.tokenize(token)]
        if got != [token_id]:
            return f"token {token_id} ({token!r}) merges from its own bytes into {got}, not itself"
    return None


def cached_merge_problem(tokenizer_json: str, compute: Callable[[], str | None]) -> str | None:
    """`merge_problem` remembered per machine under the tokenizer.json's hash: it runs the merges on every token."""
    key = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    path = cache_dir() / "tokenizers" / "bpe-rank-checks" / f"{key}-v{CHECK_VERSION}.json"
    try:
        return json.loads(path.read_text())["problem"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    problem = compute()
    try:
        atomic_write_text(path, json.dumps({"problem": problem}) + "\n")
    except OSError:
        pass  # an unwritable cache only means checking again next time
    return problem


@dataclass(frozen=True)
class FastEncoder:
    """tiktoken's core with a vocabulary's ranks and split pattern, behind the pipeline's NFC step."""

    core: Any  # tiktoken's CoreBPE
    nfc: normalizers.Normalizer

    @classmethod
    def build(cls, vocab: dict[str, int], pattern: str) -> FastEncoder:
        encoding = tiktoken.Encoding("qwen25", pat_str=pattern, mergeable_ranks=byte_ranks(vocab), special_tokens={})
        # The core, not Encoding.encode_ordinary: that one silently replaces lone surrogates, which the
        # tokenizers path rejects; the core raises, and the caller falls back to let tokenizers say so.
        return cls(encoding._core_bpe, normalizers.NFC())

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; TypeError for a non-str, UnicodeEncodeError for lone surrogates."""
        if not unicodedata.is_normalized("NFC", text):
            text = self.nfc.normalize_str(text)
        return self.core.encode_ordinary(text)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_threads(fn: Callable[[str], list[int]], texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
    """[fn(t) for t in texts] on `num_threads` threads (default: the usable CPUs), for an `fn` that releases
    the GIL while it works. Texts go in runs of consecutive ones, about 16 runs per thread, taken by whichever
    thread is free: few tasks, and a thread the OS parks on a busy machine does not hold up a fixed share."""
    n = min(num_threads or usable_cpus(), len(texts))
    if n <= 1:
        return [fn(t) for t in texts]
    size = -(-len(texts) // (16 * n))
    runs = [texts[i:i + size] for i in range(0, len(texts), size)]
    with ThreadPoolExecutor(n) as pool:
        return [ids for run in pool.map(lambda run: [fn(t) for t in run], runs) for ids in run]
