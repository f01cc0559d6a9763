"""Build the official Qwen2.5 tokenizer offline from `qwen.tiktoken` (shipped in the Apache-2.0 PyPI package
qwen-agent) and cache it once per machine.

`qwen.tiktoken` holds ranks, not merges. A rank-r token's merge is found by running BPE on its own bytes
with only lower-ranked merges until two parts remain; in rank order that reproduces all 151,387 official
merges (the shortcut "split where the larger part rank is lowest" gets 9,122 of them wrong).

The built directory is not committed to the repository: it is 11 MB of derived data, and the input is
pinned instead (qwen-agent 0.0.34 and the sha256 of qwen.tiktoken), so every machine builds the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from qwen25.io import atomic_directory, atomic_write_bytes, cache_dir
from qwen25.tokenizer.core import QwenTokenizer, byte_level_bpe, tokenizer_config
from qwen25.tokenizer.fast import bytes_to_unicode

QWEN_AGENT_VERSION = "0.0.34"
TIKTOKEN_MEMBER = "qwen_agent/utils/qwen.tiktoken"
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_REGULAR = 151643


def wheel_dir() -> Path:
    return cache_dir() / "wheels"


def qwen_agent_wheels() -> list[Path]:
    """The downloaded qwen-agent wheels of the pinned version (empty until `fetch_sources` has run)."""
    return sorted(wheel_dir().glob(f"qwen_agent-{QWEN_AGENT_VERSION}-*.whl"))


def official_dir() -> Path:
    return cache_dir() / "tokenizers" / "qwen2.5"


def find_tiktoken_file() -> Path:
    """qwen.tiktoken from the cache, else extracted from a downloaded qwen-agent wheel."""
    cached = cache_dir() / "qwen.tiktoken"
    if cached.is_file():
        return cached
    wheels = qwen_agent_wheels()
    if not wheels:
        raise FileNotFoundError(
            f"qwen.tiktoken not found in {cache_dir()}. Fetch it once with\n"
            f"  pip download --no-deps qwen-agent=={QWEN_AGENT_VERSION} -d {wheel_dir()}\n"
            "(`make` does this during setup), or pass the file's path explicitly.")
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(TIKTOKEN_MEMBER)
    atomic_write_bytes(cached, data)
    return cached


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    path = Path(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TIKTOKEN_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned qwen.tiktoken ({TIKTOKEN_SHA256})")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_REGULAR)):
        raise ValueError(f"{path}: expected ranks 0..{NUM_REGULAR - 1}")
    return ranks


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Each multi-byte token's merge, in rank order (see module docstring)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_rank, best_i = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_rank, best_i = r, i
            if best_i < 0:
                raise ValueError(f"token of rank {rank} cannot be built from lower-ranked merges")
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def build_official(tiktoken_path: str | Path | None = None) -> QwenTokenizer:
    ranks = load_tiktoken_ranks(tiktoken_path or find_tiktoken_file())
    to_str = bytes_to_unicode()

    def unicode(b: bytes) -> str:
        return "".join(to_str[x] for x in b)

    vocab = {unicode(token): rank for token, rank in ranks.items()}
    merges = [(unicode(a), unicode(b)) for a, b in derive_merges(ranks)]
    return byte_level_bpe(vocab, merges, tokenizer_config(model_max_length=131072))


def official_tokenizer(rebuild: bool = False) -> QwenTokenizer:
    """The official tokenizer, built on first use into the per-machine cache."""
    target = official_dir()
    if rebuild or not (target / "tokenizer.json").is_file():
        tok = build_official()
        with atomic_directory(target) as staging:  # the whole directory appears at once
            tok.save(staging)
    return QwenTokenizer.from_dir(target)
