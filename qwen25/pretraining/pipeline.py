"""End to end: corpus -> tokenizer -> shards -> staged pretraining -> held-out evaluation -> samples ->
`runs/<name>/report.md`. `make run` runs this with `recipes/tiny.toml`.

Each data step is skipped when its output already exists and was made from the same settings, so a
second run (or `--resume` after a kill) does not redo hours of preprocessing at scale.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from qwen25.data.corpus import CorpusSpec, build_corpus, read_jsonl
from qwen25.data.shards import ShardSet, build_shards
from qwen25.generation import SamplingParams, generate
from qwen25.io import atomic_write_text
from qwen25.model import build_model, from_pretrained
from qwen25.pretraining.recipe import Recipe, check_world
from qwen25.pretraining.report import write_report
from qwen25.pretraining.trainer import Pretrainer, model_config
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.tokenizer.train import bytes_per_token, train_bbpe
from qwen25.training.checkpoint import checkpoints
from qwen25.training.distributed import barrier, init_distributed, shutdown
from qwen25.training.startup import export_hf

SAMPLE_PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\n", "The history of the city", "In this paper we",
                  "中国经济", "新华社北京", "37 + 45 =", "Alice has 12 apples and buys 7 more."]


def _same_settings(path: Path, settings: dict) -> bool:
    return path.is_file() and json.loads(path.read_text()) == settings


def prepare_corpus(recipe: Recipe, log) -> Path:
    if recipe.data.corpus_dir:
        given = Path(recipe.data.corpus_dir)
        for name in ("train.jsonl", "heldout.jsonl"):
            if not (given / name).is_file():
                raise FileNotFoundError(f"{given / name}: data.corpus_dir needs train.jsonl and heldout.jsonl")
        return given
    out = recipe.directory / "data" / "corpus"
    spec = CorpusSpec(bytes_per_domain=dict(recipe.data.bytes_per_domain),
                      heldout_per_mille=recipe.data.heldout_per_mille, seed=recipe.seed)
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == json.loads(json.dumps(spec.__dict__)):
        log(f"corpus: reusing {out}")
    else:
        build_corpus(spec, out, log=log)
    return out


def prepare_tokenizer(recipe: Recipe, corpus: Path, log) -> QwenTokenizer:
    if recipe.tokenizer.path:
        return load_tokenizer(recipe.tokenizer.path)
    out = recipe.directory / "tokenizer"
    settings = {"vocab_size": recipe.tokenizer.vocab_size, "train_bytes": recipe.tokenizer.train_bytes,
                "corpus": str(corpus.resolve()) if recipe.data.corpus_dir else
                json.loads((corpus / "manifest.json").read_text())["spec"]}
    if _same_settings(out / "train_settings.json", settings):
        log(f"tokenizer: reusing {out}")
        return load_tokenizer(out)

    t = time.perf_counter()
    tok = train_bbpe(_interleave_domains(corpus / "train.jsonl", recipe.tokenizer.train_bytes),
                     recipe.tokenizer.vocab_size, show_progress=False)
    tok.save(out)
    atomic_write_text(out / "train_settings.json", json.dumps(settings, indent=2) + "\n")
    log(f"tokenizer: trained {tok.vocab_size} tokens in {time.perf_counter() - t:.0f}s -> {out}")
    return tok


def _interleave_domains(jsonl: Path, n_bytes: int):
    """An even share of every domain, so a small budget does not train the tokenizer on code alone."""
    by_domain: dict[str, list[str]] = {}
    stored: dict[str, int] = {}
    for doc in read_jsonl(jsonl):
        docs = by_domain.setdefault(doc["domain"], [])
        if not docs or stored[doc["domain"]] < n_bytes:  # a share is at most n_bytes: keep no more than that
            docs.append(doc["text"])
            stored[doc["domain"]] = stored.get(doc["domain"], 0) + len(doc["text"].encode())
    share = n_bytes // max(len(by_domain), 1)
    for docs in by_domain.values():
        size = 0
        for text in docs:
            yield text
            size += len(text.encode())
            if size >= share:
                break


def prepare_shards(recipe: Recipe, corpus: Path, tok: QwenTokenizer, log) -> tuple[Path, Path]:
    out = recipe.directory / "data" / "shards"
    dirs = []
    for split in ("train", "heldout"):
        target = out / split
        if (target / "manifest.json").is_file():
            log(f"shards: reusing {target}")  # checked in full (sizes, hashes, tokenizer) before training
        else:
            t = time.perf_counter()
            manifest = build_shards(corpus / f"{split}.jsonl", tok.path, target, workers=recipe.data.workers)
            counts = ", ".join(f"{d} {v['tokens']:,}" for d, v in manifest["domains"].items())
            log(f"shards: {split} tokenized in {time.perf_counter() - t:.0f}s ({counts} tokens)")
        dirs.append(target)
    return dirs[0], dirs[1]


def samples(model, tok: QwenTokenizer, seed: int, max_new_tokens: int = 48) -> list[dict]:
    model.eval()
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40,
                            seed=seed, stop_token_ids=[tok.endoftext_id])
    out = []
    for prompt in SAMPLE_PROMPTS:
        ids = generate(model, [tok.encode_ordinary(prompt)], params)[0]
        out.append({"prompt": prompt, "completion": tok.decode([i for i in ids if i != tok.endoftext_id])})
    return out


def run_pipeline(recipe: Recipe, resume: bool = False, fresh: bool = False) -> Path | None:
    info = init_distributed(recipe.train.device)
    log = print if info.main else (lambda *a, **k: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        check_world(recipe, info.world)
        # the model the recipe describes must exist before any corpus, tokenizer or shard work starts
        planned_vocab = (load_tokenizer(recipe.tokenizer.path).vocab_size if recipe.tokenizer.path
                         else recipe.tokenizer.vocab_size)
        model_config(recipe, planned_vocab, planned_vocab - 22)
        if info.main:
            recipe.directory.mkdir(parents=True, exist_ok=True)
            if fresh:  # a new run in the same directory: drop its training outputs, keep the prepared data
                for old in ("checkpoints", "hf", "metrics.jsonl", "report.md", "loss.png"):
                    path = recipe.directory / old
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            if not resume and checkpoints(recipe.directory / "checkpoints"):
                raise ValueError(f"{recipe.directory} already has checkpoints: pass --resume to continue that run, "
                                 "or choose another name")
            t = time.perf_counter()
            corpus = prepare_corpus(recipe, log)
            tok = prepare_tokenizer(recipe, corpus, log)
            train_dir, heldout_dir = prepare_shards(recipe, corpus, tok, log)
            timings["data"] = time.perf_counter() - t
        barrier(info)
        if not info.main:
            tok = load_tokenizer(recipe.tokenizer.path or recipe.directory / "tokenizer")
            train_dir, heldout_dir = (recipe.directory / "data" / "shards" / s for s in ("train", "heldout"))
        verify = info.local_rank == 0  # one hashing pass per machine: the ranks on it share the files
        train_shards = ShardSet.open(train_dir, tokenizer=tok, verify_hashes=verify)
        heldout_shards = ShardSet.open(heldout_dir, tokenizer=tok, verify_hashes=verify)

        t = time.perf_counter()
        trainer = Pretrainer(recipe, tok, train_shards, heldout_shards, info, resume=resume, log=log)
        metrics = trainer.run()
        timings["train"] = time.perf_counter() - t
        hf_dir = recipe.directory / "hf"
        eot = tok.endoftext_id
        export_hf(trainer.trainer.model, trainer.inner.config, tok, hf_dir, info,
                  {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot})
        if not info.main:
            return None
        trained = from_pretrained(hf_dir)
        untrained = build_model(trainer.cfg, device="cpu", seed=recipe.seed)
        sample_rows = {"trained": samples(trained, tok, recipe.seed), "untrained": samples(untrained, tok, recipe.seed)}
        heldout_texts = [d["text"] for d in read_jsonl(corpus / "heldout.jsonl")]
        compression = {"trained": bytes_per_token(tok, heldout_texts)}
        if recipe.tokenizer.path != "qwen2.5":
            try:
                compression["official qwen2.5"] = bytes_per_token(load_tokenizer("qwen2.5"), heldout_texts)
            except FileNotFoundError:
                pass
        timings["total"] = time.perf_counter() - t_start
        manifest = corpus / "manifest.json"
        report = write_report(recipe, trainer, metrics, sample_rows, compression, timings,
                              json.loads(manifest.read_text()) if manifest.is_file() else {"sources": []})
        log(f"report: {report}")
        return report
    finally:
        shutdown()
