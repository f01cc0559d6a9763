"""The instruct model as a data rater (report §3.1): a fixed prompt asks for scores on several quality dimensions
and a topic; the reply's format is forced and only the answer tokens are read, as probabilities.

The prompt is a system message with the rating rules plus hand-written example ratings (few-shot turns), then the
document. That shared part is prefilled once and its KV cache reused for every document, so the examples cost
nothing per document. The reply is teacher-forced: after `Quality: ` the model's distribution over the digits
1..5 gives that dimension's expected score, its most likely digit is appended, then `\\nEducational: ` follows,
and so on, ending with the first token of a topic word. A document costs one forward of its own tokens plus a few
one-token steps; no free-running text is parsed, and every answer is on the scale the prompt asks for.

`label_documents` rates a sample and appends one JSON line per document (keyed by content hash, with the text's
first `TEXT_HEAD_CHARS` characters, more than the teacher and the student read; fsynced per batch, so a killed
run resumes where it stopped). The cheap classifiers are distilled from that file alone, so they learn from every
labelled document, also those (such as planted junk) that the corpus being filtered lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen25.data.corpus import content_hash
from qwen25.io import atomic_write_text, iter_jsonl_lines
from qwen25.loading import load_model, resolve_model
from qwen25.model.kv_cache import KVCache
from qwen25.tokenizer import QwenTokenizer, load_tokenizer

DIMENSIONS = ("quality", "educational", "clean")
TEXT_HEAD_CHARS = 2000  # of each document, kept with its label: the student learns from it (it reads 1,500)
TOPICS = ("software", "science", "academic", "news", "shopping", "social", "fiction", "other")
SCALE = ("1", "2", "3", "4", "5")

SYSTEM = """You rate documents for the pretraining corpus of a language model. For each document, answer four lines:
Quality: 1-5, how well written and coherent the text or code is.
Educational: 1-5, how much useful knowledge (science, technology, reasoning, language, facts) it teaches.
Clean: 1-5; 5 for natural human-written content, 1 for boilerplate, spam, or templated or machine-generated text.
Topic: one word of software, science, academic, news, shopping, social, fiction, other.
Documents may be in any language and may be cut off."""

# (document, reply) pairs written for this prompt: they show the scale and the format.
EXAMPLES = [
    ("def median(values):\n    \"\"\"Return the median of a non-empty list of numbers.\"\"\"\n    ordered = sorted(values)\n"
     "    mid = len(ordered) // 2\n    if len(ordered) % 2:\n        return ordered[mid]\n"
     "    return (ordered[mid - 1] + ordered[mid]) / 2", (4, 4, 5, "software")),
    ("SUPER SALE!!! Cheap sunglasses 90% OFF - best sunglasses cheap price - buy sunglasses now - free gift - "
     "sunglasses sunglasses discount - CLICK HERE - limited offer - cheap sunglasses online store", (1, 1, 1, "shopping")),
    ("Plants turn light into chemical energy through photosynthesis. In the chloroplasts, chlorophyll absorbs "
     "light, which drives the splitting of water; the released electrons help build sugars from carbon "
     "dioxide, and oxygen escapes as a by-product.", (5, 5, 5, "science")),
    ("The city council voted on Tuesday to extend the night bus service to the northern districts. The mayor said "
     "the six-month trial would cost about two million and start in March.", (4, 3, 5, "news")),
    ("Sign in | Register | Cart (0)\nHome > Category > Page\nThis site uses cookies. Accept / Decline\n"
     "Copyright (c) All rights reserved. Terms | Privacy | Sitemap\nShare: Facebook Twitter Email", (1, 1, 1, "other")),
    ("lol did anyone else watch the game last night?? ref was terrible\nreply: yeah totally, we got robbed\n"
     "reply: whatever, see u all at practice", (2, 1, 4, "social")),
    ("Record 1041: status=OK value=17 unit=kg checked=yes\nRecord 1042: status=OK value=23 unit=kg checked=yes\n"
     "Record 1043: status=OK value=11 unit=kg checked=yes\nRecord 1044: status=OK value=29 unit=kg checked=yes",
     (1, 1, 1, "other")),
    ("她推开窗，远处的山在雨后格外清晰。老人说，等桃花开了，村口那条路就又要热闹起来了。", (4, 2, 5, "fiction")),
    ("这个充电宝用了一周，充电挺快的，就是有点重。物流很快，客服态度也好，总体满意。", (3, 1, 4, "shopping")),
    ("We study the convergence of stochastic gradient descent on smooth non-convex objectives and show that, "
     "with a decaying step size, the expected squared gradient norm decreases at rate O(1/sqrt(T)).",
     (4, 4, 5, "academic")),
]

ANSWER_PREFIXES = ("Quality: ", "\nEducational: ", "\nClean: ", "\nTopic:")


def reply_text(scores: Sequence[int], topic: str) -> str:
    return "".join(f"{p}{s}" for p, s in zip(ANSWER_PREFIXES, scores)) + f"{ANSWER_PREFIXES[-1]} {topic}"


def prompt_sha256() -> str:
    """Identity of the rating question: labels made with another prompt are not mixed with these."""
    return hashlib.sha256(json.dumps([SYSTEM, EXAMPLES, ANSWER_PREFIXES, DIMENSIONS, TOPICS]).encode()).hexdigest()


@dataclass
class Rating:
    scores: dict[str, float]  # expected score in [1, 5] per dimension
    topic_probs: dict[str, float]

    @property
    def topic(self) -> str:
        return max(self.topic_probs, key=self.topic_probs.get)


def _document(text: str) -> str:
    return f"<document>\n{text}\n</document>"


class Teacher:
    """Rates documents with an instruct model; `max_doc_tokens` cuts each document (the rater reads its start)."""

    def __init__(self, model: torch.nn.Module, tokenizer: QwenTokenizer, max_doc_tokens: int = 256,
                 batch_size: int = 4) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.max_doc_tokens = max_doc_tokens
        self.batch_size = batch_size
        control = tokenizer.control_ids
        messages = [{"role": "system", "content": SYSTEM}]
        for doc, (*scores, topic) in EXAMPLES:
            messages += [{"role": "user", "content": _document(doc)},
                         {"role": "assistant", "content": reply_text(scores, topic)}]
        shared, _ = tokenizer.encode_chat(messages)
        # the document starts right after "<document>\n" inside the last user turn: that part is shared too
        self.prefix = shared + [control["<|im_start|>"]] + tokenizer.encode_ordinary("user\n<document>\n")
        self.suffix = (tokenizer.encode_ordinary("\n</document>") + [control["<|im_end|>"]]
                       + tokenizer.encode_ordinary("\n") + [control["<|im_start|>"]]
                       + tokenizer.encode_ordinary("assistant\n" + ANSWER_PREFIXES[0]))
        self.steps = [tokenizer.encode_ordinary(p) for p in ANSWER_PREFIXES[1:]]
        self.choices = [self._first_tokens(SCALE)] * len(DIMENSIONS) + [self._first_tokens([" " + t for t in TOPICS])]
        self._prefix_cache: KVCache | None = None

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        ids = [self.tok.encode_ordinary(w)[0] for w in words]
        if len(set(ids)) != len(ids):
            raise ValueError(f"teacher: answers {list(words)} must start with distinct tokens, got {ids}")
        return ids

    def document_ids(self, text: str) -> list[int]:
        """The document's own tokens as the rater reads them (leading whitespace dropped, so the token boundary
        after the shared prefix is the one the full chat would have)."""
        return self.tok.encode_ordinary(text.lstrip())[:self.max_doc_tokens] or self.tok.encode_ordinary(" ")

    def _shared_cache(self) -> KVCache:
        if self._prefix_cache is None:
            cache = KVCache.for_model(self.model, 1, len(self.prefix))
            self.model(torch.tensor([self.prefix]), cache=cache, logits_to_keep=1)
            self._prefix_cache = cache
        return self._prefix_cache

    def _batch_cache(self, batch: int, capacity: int) -> KVCache:
        cache = KVCache.for_model(self.model, 0, capacity, rows=batch)
        cache.append_rows(self._shared_cache(), row=0, copies=batch)  # every row starts with the shared prefix
        return cache

    @torch.inference_mode()
    def rate_batch(self, texts: Sequence[str]) -> list[Rating]:
        rows = [self.document_ids(t) + self.suffix for t in texts]
        B, T, P = len(rows), max(len(r) for r in rows), len(self.prefix)
        # padding sits between the shared prefix and each document; position ids skip it (they count real tokens)
        ids = torch.full((B, T), self.tok.pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + T), dtype=torch.long)
        mask[:, :P] = 1
        for r, row in enumerate(rows):
            ids[r, T - len(row):] = torch.tensor(row)
            mask[r, P + T - len(row):] = 1
        cache = self._batch_cache(B, P + T + sum(len(s) + 1 for s in self.steps))
        logits = self.model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1].float()
        answers = []
        for step, choice_ids in enumerate(self.choices):
            probs = torch.softmax(logits[:, choice_ids], dim=-1)  # renormalised over the allowed answers
            answers.append(probs)
            if step == len(self.steps):
                break
            picked = torch.tensor(choice_ids)[probs.argmax(-1)]
            nxt = torch.cat([picked[:, None], torch.tensor(self.steps[step]).expand(B, -1)], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            logits = self.model(nxt, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1].float()
        values = torch.arange(1, len(SCALE) + 1, dtype=torch.float32)
        out = []
        for row in range(B):
            scores = {d: float((answers[i][row] * values).sum()) for i, d in enumerate(DIMENSIONS)}
            out.append(Rating(scores, {t: float(p) for t, p in zip(TOPICS, answers[-1][row])}))
        return out

    def rate(self, texts: Sequence[str]) -> list[Rating]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            out += self.rate_batch(texts[i:i + self.batch_size])
        return out


def sample_per_source(records: Sequence[dict], per_source: int) -> list[dict]:
    """Up to `per_source` records of each source, the ones with the smallest content hashes (a random sample that
    does not depend on the corpus order), each with its "sha256"; copies of one text are rated once."""
    by_source: dict[str, dict[str, dict]] = {}
    for r in records:
        digest = content_hash(r["text"])
        by_source.setdefault(r.get("source", ""), {}).setdefault(digest, {**r, "sha256": digest})
    seen: set[str] = set()
    out = []
    for source in sorted(by_source):
        picked = [r for h, r in sorted(by_source[source].items()) if h not in seen][:per_source]
        seen.update(r["sha256"] for r in picked)
        out += picked
    return out


def read_labels(path: str | Path) -> dict[str, dict]:
    """Labels by content hash; a torn last line (a kill mid-write) is cut off, a bad complete line is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no teacher labels; make them with `qwen25 data label` (see docs/data.md)")
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    labels = {}
    for line_no, obj in iter_jsonl_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("sha256"), str) or \
                set(obj.get("scores", {})) != set(DIMENSIONS) or set(obj.get("topic_probs", {})) != set(TOPICS):
            raise ValueError(f"{path}:{line_no}: not a teacher label (needs sha256, scores for {list(DIMENSIONS)}, "
                             f"topic_probs for {list(TOPICS)})")
        if not isinstance(obj.get("text_head", ""), str):
            raise ValueError(f"{path}:{line_no}: field 'text_head' must be a string")
        labels[obj["sha256"]] = obj
    return labels


def label_documents(teacher: Teacher, docs: Sequence[dict], out: str | Path, model_name: str,
                    log: Callable[[str], None] = print) -> dict[str, dict]:
    """Rate `docs` (records with "text", "sha256", "source") that `out` does not hold yet; append as they finish.
    A sidecar `<out>.meta.json` records the teacher and the prompt; resuming with another one is refused."""
    out = Path(out)
    meta_path = out.with_name(out.name + ".meta.json")
    meta = {"model": model_name, "prompt_sha256": prompt_sha256(), "dimensions": list(DIMENSIONS),
            "topics": list(TOPICS), "max_doc_tokens": teacher.max_doc_tokens}
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text())
        changed = sorted(k for k in meta if previous.get(k) != meta[k])
        if changed:
            raise ValueError(f"{meta_path}: these labels were made with another teacher or prompt "
                             f"({', '.join(changed)} differ); write to another file")
    else:
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    done = read_labels(out) if out.is_file() else {}
    todo = [d for d in docs if d["sha256"] not in done]
    log(f"label: {len(done)} done, {len(todo)} to rate with {model_name}")
    t0 = time.perf_counter()
    with out.open("a", encoding="utf-8") as f:
        for i in range(0, len(todo), teacher.batch_size):
            batch = todo[i:i + teacher.batch_size]
            t_batch = time.perf_counter()
            ratings = teacher.rate_batch([d["text"] for d in batch])
            seconds = (time.perf_counter() - t_batch) / len(batch)
            for doc, rating in zip(batch, ratings):
                record = {"sha256": doc["sha256"], "source": doc.get("source", ""),
                          "text_head": doc["text"][:TEXT_HEAD_CHARS],
                          "scores": {k: round(v, 4) for k, v in rating.scores.items()},
                          "topic_probs": {k: round(v, 4) for k, v in rating.topic_probs.items()},
                          "seconds": round(seconds, 3)}
                f.write(json.dumps(record) + "\n")
                done[doc["sha256"]] = record
            f.flush()
            os.fsync(f.fileno())
            n = i + len(batch)
            log(f"label: {n}/{len(todo)} ({(time.perf_counter() - t0) / n:.1f} s/doc)")
    return done


def label_corpus(model: str, records_path: str | Path, out: str | Path, per_source: int = 40,
                 max_doc_tokens: int = 256, batch_size: int = 4, log: Callable[[str], None] = print) -> dict[str, dict]:
    """`qwen25 data label`: rate a per-source sample of a record file with an instruct model (a model directory
    or a fetched model's name, e.g. qwen2.5-coder-0.5b-instruct) into `out`; rerun to resume."""
    records = []
    for line_no, r in iter_jsonl_lines(records_path):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise ValueError(f"{records_path}:{line_no}: needs a JSON object with a 'text' string")
        records.append(r)
    path = resolve_model(model)
    teacher = Teacher(load_model(path, dtype="bfloat16"), load_tokenizer(path), max_doc_tokens, batch_size)
    return label_documents(teacher, sample_per_source(records, per_source), out, model, log)
