"""Preference pairs for the reward model and DPO: JSONL read and checked line by line, encoded with the chat format,
and batched as chosen rows then rejected rows.

One line (the format `qwen25 data pairs` writes, `qwen25/data/curation.py`):
`{"prompt": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "...", "category": "...",
"provenance": {...}}`. The prompt may also be a plain string (one user message); chosen and rejected may also be
TRL's conversational form, a list holding one assistant message. The category (for per-category reward-model
accuracy) is `category`, else the provenance's family, else "all".

A completion is the assistant turn as the chat format writes it: its content and the closing <|im_end|>, the tokens
an SFT loss would train on. A missing field, an empty completion or identical chosen and rejected texts is an error
naming the file and line.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qwen25.io import iter_jsonl_lines
from qwen25.posttraining.conversations import ConversationError, normalise_messages
from qwen25.tokenizer import QwenTokenizer
from qwen25.training.distributed import DistInfo
from qwen25.training.recipe import RecipeError


class PairError(ValueError):
    """A preference pair that cannot be used; the message names the file and line."""


@dataclass
class Pair:
    prompt: np.ndarray  # int64 [p]: the chat prompt up to and including the assistant header
    chosen: np.ndarray  # int64 [c]: the preferred completion (content + <|im_end|>)
    rejected: np.ndarray  # int64 [r]
    category: str
    source: str  # "file:line"


@dataclass
class PairStats:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        cats = ", ".join(f"{c} {n}" for c, n in sorted(self.categories.items()))
        return f"{self.read} pairs read, {self.kept} kept ({cats}), dropped: {dropped}"


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise PairError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise PairError(f"{where}: 'prompt' must be a non-empty list of messages or a string")
    try:
        messages = normalise_messages(value + [{"role": "assistant", "content": ""}], where)[:-1]
    except ConversationError as e:
        raise PairError(str(e).replace(f"messages[{len(value)}]", "prompt")) from None
    if messages[-1]["role"] == "assistant":
        raise PairError(f"{where}: 'prompt' ends with an assistant message; it must end with the turn to answer")
    return messages


def _completion(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise PairError(f"{where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str):
        raise PairError(f"{where}: '{key}' must be a string (or one assistant message), got {type(value).__name__}")
    if not value.strip():
        raise PairError(f"{where}: '{key}' is an empty completion")
    return value


def read_pairs(path: str | Path) -> list[tuple[str, list[dict], str, str, str]]:
    """(where, prompt messages, chosen, rejected, category) per line, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preference pair file not found")
    out = []
    try:
        for line_no, obj in iter_jsonl_lines(path):
            where = f"{path}:{line_no}"
            if not isinstance(obj, dict):
                raise PairError(f"{where}: expected an object with 'prompt', 'chosen' and 'rejected'")
            if "prompt" not in obj:
                raise PairError(f"{where}: missing field 'prompt'")
            prompt = _prompt(obj["prompt"], where)
            chosen, rejected = _completion(obj, "chosen", where), _completion(obj, "rejected", where)
            if chosen == rejected:
                raise PairError(f"{where}: 'chosen' and 'rejected' are identical; a pair must differ")
            category = obj.get("category") or ((obj.get("provenance") or {}).get("chosen") or {}).get("family") or "all"
            out.append((where, prompt, chosen, rejected, str(category)))
    except UnicodeDecodeError as e:
        raise PairError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return out


def encode_completion(tok: QwenTokenizer, prompt: list[dict], prompt_ids: list[int], text: str, where: str) -> list[int]:
    ids, mask = tok.encode_chat(prompt + [{"role": "assistant", "content": text}])
    if ids[:len(prompt_ids)] != prompt_ids:
        raise PairError(f"{where}: the prompt does not encode to the same tokens with and without the answer")
    last = max(i for i, m in enumerate(mask) if m)  # the closing <|im_end|>
    return ids[len(prompt_ids):last + 1]


def load_pairs(paths: Sequence[str | Path], tok: QwenTokenizer, max_len: int, stats: PairStats | None = None) -> list[Pair]:
    """Every pair of `paths`, encoded; a pair whose longer side exceeds `max_len` tokens is dropped and counted."""
    stats = stats if stats is not None else PairStats()
    out = []
    for path in paths:
        for where, prompt, chosen, rejected, category in read_pairs(path):
            stats.read += 1
            try:
                prompt_ids, _ = tok.encode_chat(prompt, add_generation_prompt=True)
            except ValueError as e:
                raise PairError(f"{where}: {e}") from None
            c = encode_completion(tok, prompt, prompt_ids, chosen, where)
            r = encode_completion(tok, prompt, prompt_ids, rejected, where)
            if len(prompt_ids) + max(len(c), len(r)) > max_len:
                stats.dropped[f"longer than {max_len} tokens"] += 1
                continue
            stats.kept += 1
            stats.categories[category] += 1
            out.append(Pair(np.asarray(prompt_ids, dtype=np.int64), np.asarray(c, dtype=np.int64),
                            np.asarray(r, dtype=np.int64), category, where))
    return out


def files_digest(paths: Sequence[str | Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


@dataclass
class PairData:
    train: list[str] = field(default_factory=list)  # JSONL pair files
    heldout: list[str] = field(default_factory=list)
    epochs: int = 1
    pairs_per_step: int = 64  # over all processes
    max_len: int = 1024  # prompt + longer completion, in tokens; longer pairs are dropped and counted

    def check(self, source: str) -> None:
        if not self.train:
            raise RecipeError(f"{source}: data.train must list at least one JSONL pair file")
        for key in ("epochs", "pairs_per_step", "max_len"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{source}: data.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class PairBatch:
    """A micro-batch of P pairs: 2P right-padded rows, the P chosen sequences first, then the P rejected ones.

    labels: the next token at completion positions, -100 elsewhere (so summed log-probs cover completions only).
    last: index of each row's last token (where a reward model reads its score).
    index: the pairs' positions in the dataset (the key of cached reference log-probs).
    """

    input_ids: torch.Tensor  # [2P, T]
    labels: torch.Tensor  # [2P, T]
    last: torch.Tensor  # [2P]
    index: torch.Tensor  # [P]
    categories: list[str]
    ref_logps: torch.Tensor | None = None  # [2P] reference log-probs (chosen then rejected), when cached

    @property
    def pairs(self) -> int:
        return len(self.index)


def collate_pairs(pairs: Sequence[Pair], indices: Sequence[int], pad_id: int) -> PairBatch:
    rows = [(pairs[i].prompt, pairs[i].chosen) for i in indices] + [(pairs[i].prompt, pairs[i].rejected) for i in indices]
    length = max(len(p) + len(c) for p, c in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    labels = np.full((len(rows), length), -100, dtype=np.int64)
    last = np.zeros(len(rows), dtype=np.int64)
    for r, (prompt, completion) in enumerate(rows):
        n = len(prompt) + len(completion)
        ids[r, :len(prompt)] = prompt
        ids[r, len(prompt):n] = completion
        labels[r, len(prompt) - 1:n - 1] = completion  # position t predicts token t + 1
        last[r] = n - 1
    return PairBatch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(last),
                     torch.tensor(list(indices), dtype=torch.long), [pairs[i].category for i in indices])


class PairSource:
    """The trainer's step source for pairs: `epochs` passes, each shuffled by (seed, epoch); each step takes
    `pairs_per_step` pairs over all processes (a multiple of the process count: every rank gets the same share, so
    sharded training never waits on a rank with nothing to do), this rank's share cut into micro-batches of
    `micro_batch` pairs. Pairs left over at the end of an epoch (fewer than a step) wait for the next shuffle.
    `attach` (optional) adds per-batch data such as cached reference log-probs."""

    def __init__(self, pairs: Sequence[Pair], pairs_per_step: int, epochs: int, seed: int, pad_id: int,
                 info: DistInfo, micro_batch: int, attach=None) -> None:
        if pairs_per_step % info.world:
            raise ValueError(f"pairs per step ({pairs_per_step}) must be a multiple of the process count ({info.world})")
        if len(pairs) < pairs_per_step:
            raise ValueError(f"{len(pairs)} preference pairs are fewer than one step's {pairs_per_step}")
        self.pairs, self.per_step, self.epochs, self.seed = pairs, pairs_per_step, epochs, seed
        self.pad_id, self.info, self.micro, self.attach = pad_id, info, micro_batch, attach
        self.epoch, self.step_in_epoch = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.pairs) // self.per_step

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def next_step(self) -> list[PairBatch]:
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        if self.epoch >= self.epochs:
            raise StopIteration("all epochs of the pair data are done")
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs))
        chosen = order[self.step_in_epoch * self.per_step:(self.step_in_epoch + 1) * self.per_step]
        self.step_in_epoch += 1
        mine = chosen[self.info.rank::self.info.world].tolist()
        batches = [collate_pairs(self.pairs, mine[i:i + self.micro], self.pad_id) for i in range(0, len(mine), self.micro)]
        return [self.attach(b) for b in batches] if self.attach else batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]


def pair_batches(pairs: Sequence[Pair], micro_batch: int, pad_id: int, info: DistInfo) -> list[PairBatch]:
    """Held-out pairs in file order, this rank's share."""
    mine = list(range(info.rank, len(pairs), info.world))
    return [collate_pairs(pairs, mine[i:i + micro_batch], pad_id) for i in range(0, len(mine), micro_batch)]
