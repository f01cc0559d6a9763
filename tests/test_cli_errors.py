"""No bad input reaches the user as a traceback: every verb against a battery of bad arguments and files gives
exit code 2, one line on stderr, and names the culprit (flag, file, key or field). Run in-process (fast);
Ctrl-C and undecodable argv bytes run as real subprocesses."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from qwen25 import cli
from qwen25.cli import model_verbs
from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer import load_tokenizer

TINY = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, dtype="float32", tie_word_embeddings=True,
                   eos_token_id=151643, bos_token_id=151643)
TOML_OK = """
name = "t"
run_dir = "{run}"
[model]
preset = "qwen25-tiny"
overrides = {{ vocab_size = 512, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 4, num_key_value_heads = 2 }}
[tokenizer]
vocab_size = 512
[train]
micro_batch = 4
[[stages]]
seq_len = 64
batch = 8
tokens = 4096
"""
SFT_OK = """
name = "s"
run_dir = "{run}"
[model]
path = "{model}"
[train]
micro_batch = 2
dtype = "float32"
[[phases]]
data = ["{data}"]
seq_len = 256
batch = 2
"""
PAIRS_OK = """
run_dir = "{run}"
[model]
path = "{model}"
{extra}
[data]
train = ["{data}"]
pairs_per_step = 2
[train]
micro_batch = 2
dtype = "float32"
"""
EXTRA = {"rm": "", "dpo": "[optimizer]\nalpha = 0.0"}
GRPO_OK = """
run_dir = "{run}"
queries = ["{queries}"]
[model]
path = "{model}"
[rollout]
group_size = 4
queries_per_step = 2
max_new_tokens = 4
[train]
micro_batch = 8
dtype = "float32"
"""

SCALING_OK = """
name = "sc"
run_dir = "{run}"
[tokenizer]
vocab_size = 512
[sweep]
seq_len = 32
tokens = [4096]
[[models]]
name = "a"
overrides = {{ hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }}
[heldout.dense]
name = "b"
overrides = {{ hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }}
tokens = [8192]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = root / "model"
    build_model(TINY, seed=0).save_pretrained(model)
    load_tokenizer("qwen2.5").save(model)
    bare = root / "bare"
    build_model(TINY, seed=0).save_pretrained(bare)  # no tokenizer
    (root / "empty").mkdir()
    (root / "notjson").mkdir()
    (root / "notjson" / "config.json").write_text("{not json")
    cfg = json.loads((model / "config.json").read_text())
    for name, change in (("streps", {"rms_norm_eps": "1e-6"}), ("neghidden", {"hidden_size": -8}),
                         ("badtype", {"model_type": "llama"})):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("someone else's file")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (root / "text.txt").write_text("hello")
    (root / "bad.toml").write_text("name = [unclosed")
    ok = root / "ok.toml"
    ok.write_text(TOML_OK.format(run=root / "run"))
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (root / "sft.jsonl").write_text(json.dumps(conv) + "\n" + '{"messages": [\n')
    (root / "sft.toml").write_text(SFT_OK.format(run=root / "sftrun", model=model, data=root / "sft.jsonl"))
    (root / "sft_nomodel.toml").write_text(SFT_OK.format(run=root / "sftrun", model=root / "missing",
                                                         data=root / "sft.jsonl"))
    (root / "queries.jsonl").write_text("not json\n")
    (root / "records.jsonl").write_text(json.dumps({"text": "A short document.", "source": "s"}) + "\n")
    good = {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}
    for name, bad in (("nofield", {"prompt": "What is 2 + 2?", "chosen": "4"}),
                      ("same", {**good, "rejected": "2"}), ("emptyc", {**good, "chosen": ""})):
        (root / f"pairs_{name}.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        for stage in ("rm", "dpo"):
            (root / f"{stage}_{name}.toml").write_text(PAIRS_OK.format(run=root / f"{stage}run", model=model,
                                                                      data=root / f"pairs_{name}.jsonl",
                                                                      extra=EXTRA[stage]))
    (root / "pairs_ok.jsonl").write_text(json.dumps(good) + "\n")
    for stage in ("rm", "dpo"):
        (root / f"{stage}.toml").write_text(PAIRS_OK.format(run=root / f"{stage}run", model=model,
                                                           data=root / "pairs_ok.jsonl", extra=EXTRA[stage]))
    (root / "grpo.toml").write_text(GRPO_OK.format(run=root / "grpo", model=model, queries=root / "noqueries.jsonl"))
    (root / "scaling.toml").write_text(SCALING_OK.format(run=root / "scalingrun"))
    (root / "badrecord.jsonl").write_text('{"id": "x", "model": "m"}\n')
    (root / "docs.jsonl").write_text('{"text": "a document"}\n')
    return root


def R(path: str, files) -> str:
    return path.replace("@", str(files) + "/")


# (argv, text the one-line message must contain)
CASES = [
    # info
    (["info", "qwen2.5-9b"], "unknown preset 'qwen2.5-9b'"),
    (["info", "@text.txt"], "text.txt"),
    (["info", "@empty"], "no config.json"),
    (["info", "@notjson"], "not valid JSON"),
    (["info", "@streps"], "rms_norm_eps"),
    (["info", "@neghidden"], "hidden_size"),
    (["info", "@badtype"], "model_type"),
    (["info"], "model"),
    # tokenizer
    (["tokenizer", "encode", "--tokenizer", "@missing", "--text", "x"], "missing"),
    (["tokenizer", "encode", "--file", "@nofile.txt"], "nofile.txt"),
    (["tokenizer", "encode", "--file", "@binary.txt"], "binary.txt"),
    (["tokenizer", "encode"], "--text"),
    (["tokenizer", "train", "@nofile.txt", "--vocab-size", "512", "--out", "@tok"], "nofile.txt"),
    (["tokenizer", "train", "@text.txt", "--vocab-size", "0", "--out", "@tok"], "--vocab-size"),
    (["tokenizer", "train", "@text.txt", "--vocab-size", "100", "--out", "@tok"], "vocab"),
    (["tokenizer", "train", "@text.txt", "--vocab-size", "abc", "--out", "@tok"], "--vocab-size"),
    (["tokenizer", "build-qwen", "--tiktoken", "@nofile.tiktoken", "--out", "@tok"], "nofile.tiktoken"),
    # pretrain run: recipes checked before any work
    (["pretrain", "run", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["pretrain", "run", "--recipe", "@bad.toml"], "not valid TOML"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.micro_bach=4"], "unknown key 'micro_bach'"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.micro_batch=-4"], "train.micro_batch"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.micro_batch=0"], "train.micro_batch"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.keep_last=-1"], "train.keep_last"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.keep_last=0"], "train.keep_last"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "data.mixture.code=-1"], "data.mixture.code"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "data.mixture={code=0}"], "data.mixture"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.batch=6"], "stages[0].batch"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.tokens=0"], "stages[0].tokens"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.lr=-1"], "stages[0].lr"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.seq_len=1"], "stages[0].seq_len"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.schedule=linear"], "stages[0].schedule"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.long_fraction=0"], "long_fraction"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.5.tokens=1"], "no element 5"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "stages.0.tokens=2.5"], "stages[0].tokens"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.dtype=int8"], "train.dtype"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.parallel=tp"], "train.parallel"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "train.nonfinite=ignore"], "train.nonfinite"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "model.preset=qwen9"], "qwen9"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "model.overrides.max_position_embeddings=32"],
     "max_position_embeddings"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "model.overrides.rms_norm_eps=\"x\""], "rms_norm_eps"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "model.overrides.wings=2"], "wings"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "model.overrides.vocab_size=100"], "vocab_size"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "tokenizer.vocab_size=10"], "tokenizer.vocab_size"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "name=a/b"], "name"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "nonsense"], "section.key=value"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "data.workers=0"], "data.workers"),
    (["pretrain", "run", "--recipe", "@ok.toml", "--set", "data.heldout_per_mille=2000"], "heldout_per_mille"),
    (["pretrain", "run"], "--recipe"),
    # pretrain export
    (["pretrain", "export", "--checkpoint", "@nockpt", "--out", "@exp"], "nockpt"),
    (["pretrain", "export", "--checkpoint", "@empty", "--out", "@exp"], "not a complete training checkpoint"),
    # sft
    (["sft", "run", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["sft", "run", "--recipe", "@sft.toml"], "sft.jsonl:2"),
    (["sft", "run", "--recipe", "@sft_nomodel.toml"], "missing"),
    (["sft", "run", "--recipe", "@sft.toml", "--set", "phases.0.epochs=0"], "phases[0].epochs"),
    (["sft", "run", "--recipe", "@sft.toml", "--set", "phases.0.overlong=cut"], "phases[0].overlong"),
    (["sft", "run", "--recipe", "@sft.toml", "--set", "model.preset=qwen25-tiny"], "model"),
    (["sft", "run", "--recipe", "@sft.toml", "--set", "min_lr=1"], "min_lr"),
    (["sft", "run", "--recipe", "@sft.toml", "--set", "phases=[]"], "phases"),
    # pipeline
    (["pipeline", "run", "--pretrain-recipe", "@nofile.toml"], "nofile.toml"),
    (["pipeline", "run", "--sft-recipe", "@nofile2.toml"], "nofile2.toml"),
    # alignment: reward model, DPO, GRPO (bad pair data names the file and line)
    (["rm", "train", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["rm", "train", "--recipe", "@rm_nofield.toml"], "pairs_nofield.jsonl:2"),
    (["rm", "train", "--recipe", "@rm_same.toml"], "pairs_same.jsonl:2"),
    (["rm", "train", "--recipe", "@rm_emptyc.toml"], "pairs_emptyc.jsonl:2"),
    (["rm", "train", "--recipe", "@rm.toml", "--set", "data.train=[\"@nopairs.jsonl\"]"], "nopairs.jsonl"),
    (["rm", "train", "--recipe", "@rm.toml", "--set", "data.pairs_per_step=0"], "data.pairs_per_step"),
    (["rm", "train", "--recipe", "@rm.toml", "--set", "model.path=\"@missing\""], "missing"),
    (["dpo", "run", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["dpo", "run", "--recipe", "@dpo_nofield.toml"], "pairs_nofield.jsonl:2"),
    (["dpo", "run", "--recipe", "@dpo_same.toml"], "pairs_same.jsonl:2"),
    (["dpo", "run", "--recipe", "@dpo_emptyc.toml"], "pairs_emptyc.jsonl:2"),
    (["dpo", "run", "--recipe", "@dpo.toml", "--set", "beta=0"], "beta"),
    (["dpo", "run", "--recipe", "@dpo.toml", "--set", "optimizer.kind=sgd"], "optimizer.kind"),
    (["dpo", "run", "--recipe", "@dpo.toml", "--set", "optimizer.reserve=0"], "optimizer.reserve"),
    (["dpo", "run", "--recipe", "@dpo.toml", "--set", "optimizer.alpha=0.5"], "optimizer.base"),
    (["dpo", "run", "--recipe", "@dpo.toml", "--set", "reference=shared"], "reference"),
    (["grpo", "run", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["grpo", "run", "--recipe", "@grpo.toml"], "noqueries.jsonl"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "rollout.group_size=1"], "rollout.group_size"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "rollout.max_rows=2"], "rollout.max_rows"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "aggregation=sum"], "aggregation"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "queries=[]"], "queries"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "rewards.reward_model=1.0"], "rewards.reward_model_path"),
    (["grpo", "run", "--recipe", "@grpo.toml", "--set", "order.samples=1"], "order"),
    # long context
    (["eval", "longctx", "--model", "@model", "--lengths", "-5"], "--lengths"),
    (["eval", "longctx", "--model", "@model", "--depths", "1.5"], "--depths"),
    (["eval", "longctx", "--model", "@model", "--samples", "0"], "--samples"),
    (["eval", "longctx", "--model", "@model", "--chunk-size", "0"], "--chunk-size"),
    (["eval", "longctx", "--model", "@model", "--yarn-factor", "0.5"], "--yarn-factor"),
    (["eval", "longctx", "--model", "@model", "--prefill-chunk", "-1"], "--prefill-chunk"),
    (["eval", "longctx", "--model", "@model", "--tasks", "nosuchtask", "--lengths", "64", "--samples", "1"],
     "nosuchtask"),
    (["eval", "longctx", "--model", "@missing"], "missing"),
    (["eval", "longctx", "--model", "@bare", "--lengths", "64"], "tokenizer"),
    (["longctx", "extrapolate", "--steps", "-1"], "--steps"),
    (["longctx", "extrapolate", "--length", "10"], "--length"),
    (["longctx", "extrapolate", "--multiples", "0"], "--multiples"),
    (["longctx", "extrapolate", "--samples", "x"], "--samples"),
    # GGUF and models
    (["convert", "gguf", "@nofile.gguf", "@out"], "nofile.gguf"),
    (["convert", "gguf", "@text.txt", "@out"], "text.txt"),
    (["convert", "gguf", "@text.txt", "@full"], "full"),
    (["export", "gguf", "@missing", "@x.gguf"], "missing"),
    (["export", "gguf", "@model", "@x.gguf", "--type", "q2"], "--type"),
    (["models", "fetch", "no-such-model"], "no-such-model"),
    # data
    (["data", "queries", "--out", "@q.jsonl", "--math", "-3"], "--math"),
    (["data", "sft-build", "--queries", "@noqueries.jsonl", "--model", "@model", "--out", "@cur"], "noqueries.jsonl"),
    (["data", "pairs", "--queries", "@queries.jsonl", "--model", "@model", "--out", "@cur2"], "queries.jsonl"),
    (["data", "autoif", "--model", "@missing", "--out", "@q.jsonl"], "missing"),
    (["data", "autoif", "--model", "@model", "--out", "@q.jsonl", "--k", "0"], "--k"),
    (["data", "queries", "--out", "@q.jsonl", "--math", "2", "--system-prompts", "1.5"], "--system-prompts"),
    (["data", "sft-build", "--queries", "@queries.jsonl", "--model", "@model", "--out", "@cur", "--batch", "0"],
     "--batch"),
    (["data", "backtranslate", "--docs", "@nodocs.jsonl", "--model", "@model", "--out", "@bt"], "nodocs.jsonl"),
    (["data", "backtranslate", "--docs", "@queries.jsonl", "--model", "@model", "--out", "@bt"], "queries.jsonl"),
    (["data", "backtranslate", "--docs", "@sft.jsonl", "--model", "@model", "--out", "@bt"], "sft.jsonl:1"),
    (["data", "backtranslate", "--docs", "@sft.jsonl", "--model", "@missing", "--out", "@bt"], "missing"),
    (["data", "backtranslate", "--docs", "@sft.jsonl", "--model", "@model", "--out", "@bt", "--min-chars", "900",
      "--max-chars", "100"], "--min-chars"),
    (["data", "backtranslate", "--docs", "@sft.jsonl", "--model", "@model", "--out", "@bt", "--k", "0"], "--k"),
    (["data", "crosslingual", "--queries", "@noqueries.jsonl", "--model", "@model", "--out", "@x.jsonl"],
     "noqueries.jsonl"),
    (["data", "crosslingual", "--queries", "@queries.jsonl", "--model", "@model", "--out", "@x.jsonl"],
     "queries.jsonl"),
    (["data", "crosslingual", "--queries", "@queries.jsonl", "--model", "@model", "--out", "@x.jsonl",
      "--languages", "zh,xx"], "--languages"),
    (["data", "crosslingual", "--queries", "@queries.jsonl", "--model", "@model", "--out", "@x.jsonl",
      "--min-agreement", "2"], "--min-agreement"),
    (["data", "critic", "--sft", "@nofile.jsonl", "--critic", "@model", "--out", "@k.jsonl"], "nofile.jsonl"),
    (["data", "critic", "--sft", "@sft.jsonl", "--critic", "@model", "--out", "@k.jsonl"], "sft.jsonl:2"),
    (["data", "critic", "--sft", "@queries.jsonl", "--critic", "@model", "--out", "@k.jsonl"], "queries.jsonl"),
    (["data", "critic", "--sft", "@sft.jsonl", "--critic", "@missing", "--out", "@k.jsonl"], "missing"),
    (["data", "critic", "--sft", "@sft.jsonl", "--critic", "@model", "--out", "@k.jsonl", "--top-rating", "11"],
     "--top-rating"),
    (["data", "critic", "--sft", "@sft.jsonl", "--critic", "@model", "--out", "@k.jsonl", "--samples", "0"],
     "--samples"),
    (["data", "critic", "--sft", "@sft.jsonl", "--critic", "@model", "--out", "@k.jsonl", "--temperature", "0"],
     "--temperature"),
    (["models", "list", "--all"], "--all"),
    # data: the pretraining data pipeline, teacher labels, verified synthetic data
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq"], "train.jsonl"),
    (["data", "pipeline", "--recipe", "@nofile.toml", "--corpus", "@empty", "--out", "@dq"], "nofile.toml"),
    (["data", "pipeline", "--recipe", "@bad.toml", "--corpus", "@empty", "--out", "@dq"], "not valid TOML"),
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq", "--set", "dedup.buckets=0"], "dedup.buckets"),
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq", "--set", "dedup.bands=4"], "bands"),
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq", "--set", "mixture.target={news=0.9,science=0.5}"],
     "mixture.target"),
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq", "--set", "executor.kind=spark"], "executor.kind"),
    (["data", "pipeline", "--corpus", "@empty", "--out", "@dq", "--set", "quality.labels=@nolabels.jsonl"],
     "nolabels.jsonl"),
    (["data", "label", "--input", "@nofile.jsonl", "--out", "@labels.jsonl", "--model", "@model"], "nofile.jsonl"),
    (["data", "label", "--input", "@queries.jsonl", "--out", "@labels.jsonl", "--model", "@model"], "queries.jsonl:1"),
    (["data", "label", "--input", "@records.jsonl", "--out", "@labels.jsonl", "--model", "@missing"], "missing"),
    (["data", "label", "--input", "@queries.jsonl", "--out", "@labels.jsonl", "--per-source", "0"], "--per-source"),
    (["data", "synthesize", "--model", "@missing", "--out", "@syn"], "missing"),
    (["data", "synthesize", "--model", "@model", "--out", "@syn", "--k", "0"], "--k"),
    (["data", "synthesize", "--model", "@model", "--out", "@syn", "--math", "-1"], "--math"),
    # generate
    (["generate", "--model", "@missing", "--prompt", "hi"], "missing"),
    (["generate", "--model", "@model", "--prompt-ids", "1 999999", "--max-new-tokens", "2"], "outside the vocabulary"),
    (["generate", "--model", "@model", "--prompt", "hi", "--max-new-tokens", "x"], "--max-new-tokens"),
    (["generate", "--model", "@model", "--prompt-ids", "1 two 3"], "--prompt-ids"),
    (["generate", "--model", "@model", "--prompt", "hi", "--prompt-ids", "1"], "--prompt-ids"),
    (["generate", "--model", "@model", "--chat", "--prompt-ids", "1 2"], "--chat"),
    (["generate", "--model", "@model", "--prompt", "hi", "--top-p", "1.5"], "--top-p"),
    (["generate", "--model", "@model", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "--model", "@model", "--prompt", "hi", "--top-k", "-2"], "--top-k"),
    (["kernels", "--model", "@missing"], "missing"),
    (["kernels", "--model", "@model", "--dtype", "int8"], "--dtype"),
    # serve
    (["serve", "--model", "@missing"], "missing"),
    (["serve", "--model", "@bare"], "tokenizer"),
    (["serve", "--model", "@model", "--port", "70000"], "--port"),
    (["serve", "--model", "@model", "--api-key", " "], "--api-key"),
    (["serve", "--model", "@model", "--max-batch", "0"], "--max-batch"),
    (["serve", "--model", "@model", "--max-queue", "x"], "--max-queue"),
    (["serve", "--model", "@model", "--tokenizer", "@nosuchtok"], "nosuchtok"),
    (["serve", "--model", "@model", "--quantize", "int2"], "--quantize"),
    # scaling laws
    (["scaling", "sweep", "--recipe", "@nofile.toml"], "nofile.toml"),
    (["scaling", "sweep", "--recipe", "@bad.toml"], "not valid TOML"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--shard", "3/2"], "--shard"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--shard", "x"], "--shard"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--threads", "-1"], "--threads"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.lr=[1]"], "unknown key 'lr'"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.lrs=[-1]"], "sweep.lrs"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.lrs=[1e-3, 1e-3]"], "sweep.lrs"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.batches=[0]"], "sweep.batches"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.tokens=[8]"], "sweep.tokens"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.schedule=linear"], "sweep.schedule"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.warmup_fraction=1.5"], "warmup_fraction"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "sweep.curve_points=0"], "sweep.curve_points"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "models=[]"], "models"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "models.0.preset=qwen9"], "qwen9"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "models.0.overrides.hidden_size=-1"],
     "hidden_size"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "models.0.name=a/b"], "models[0].name"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "train.micro_batch=0"], "train.micro_batch"),
    (["scaling", "sweep", "--recipe", "@scaling.toml", "--set", "data.workers=0"], "data.workers"),
    (["scaling", "validate", "--recipe", "@scaling.toml"], "results.jsonl"),
    (["scaling", "validate", "--recipe", "@scaling.toml", "--set", "heldout.dense.tokens=[1, 2]"],
     "heldout.dense.tokens"),
    (["scaling", "validate", "--recipe", "@scaling.toml", "--set", "heldout.lr_factors=[1]"], "heldout.lr_factors"),
    (["scaling", "validate", "--recipe", "@scaling.toml", "--set", "heldout.dense.overrides.num_experts=4"],
     "heldout.dense"),
    (["scaling", "validate", "--recipe", "@scaling.toml", "--replicates", "5"], "--replicates"),
    (["scaling", "fit", "--results", "@nofile.jsonl", "--out", "@fitout"], "nofile.jsonl"),
    (["scaling", "fit", "--results", "@queries.jsonl", "--out", "@fitout"], "queries.jsonl:1"),
    (["scaling", "fit", "--results", "@badrecord.jsonl", "--out", "@fitout"], "badrecord.jsonl:1"),
    (["scaling", "fit", "--results", "@badrecord.jsonl", "--out", "@fitout", "--measure", "all"], "--measure"),
    (["scaling", "fit", "--results", "@badrecord.jsonl", "--out", "@fitout", "--huber-delta", "0"],
     "--huber-delta"),
    (["scaling", "predict", "--fit", "@nofit", "--params", "1e6", "--tokens", "1e9"], "nofit"),
    (["scaling", "predict", "--fit", "@text.txt", "--params", "1e6", "--tokens", "1e9"], "text.txt"),
    (["scaling", "predict", "--fit", "@text.txt", "--params", "-1", "--tokens", "1e9"], "--params"),
    (["scaling", "predict", "--fit", "@text.txt", "--params", "1e6"], "--tokens"),
    # evaluation and decontamination
    (["eval", "run", "--model", "@model", "--tasks", "arc_easy,bogus"], "unknown task 'bogus'"),
    (["eval", "run", "--model", "@bare", "--tasks", "arc_easy"], "no tokenizer.json"),
    (["eval", "run", "--model", "@missing", "--tasks", "arc_easy"], "missing"),
    (["eval", "run", "--model", "@model", "--tasks", "arc_easy", "--limit", "0"], "--limit"),
    (["eval", "run", "--model", "@model", "--tasks", "arc_easy", "--shots", "-1"], "--shots"),
    (["eval", "run", "--model", "@model", "--tasks", "humaneval", "--samples", "0"], "--samples"),
    (["eval", "run", "--model", "@model", "--tasks", "humaneval", "--temperature", "-0.5"], "--temperature"),
    (["eval", "run", "--model", "@model", "--tasks", "humaneval", "--timeout", "0"], "--timeout"),
    (["eval", "run", "--model", "@model", "--tasks", "arc_easy", "--batch-tokens", "x"], "--batch-tokens"),
    (["eval", "run", "--model", "@model", "--tasks", "humaneval", "--limit", "1", "--samples", "3",
      "--temperature", "0"], "--temperature"),
    (["eval", "run", "--model", "@model"], "--tasks"),
    (["data", "decontaminate", "--input", "@nodocs.jsonl", "--against", "gsm8k", "--out", "@clean.jsonl"],
     "nodocs.jsonl"),
    (["data", "decontaminate", "--input", "@queries.jsonl", "--against", "gsm8k", "--out", "@clean.jsonl",
      "--window", "8"], "--window"),
    (["data", "decontaminate", "--input", "@docs.jsonl", "--against", "nosuchtask", "--out", "@clean.jsonl"],
     "nosuchtask"),
    (["data", "decontaminate", "--input", "@docs.jsonl", "--against", "passkey", "--out", "@clean.jsonl"],
     "passkey"),
    (["data", "decontaminate", "--input", "@queries.jsonl", "--against", "humaneval", "--out", "@clean.jsonl"],
     "queries.jsonl:1"),
    # quantize
    (["quantize", "--model", "@missing", "--scheme", "int8", "--out", "@q"], "missing"),
    (["quantize", "--model", "@notjson", "--scheme", "int8", "--out", "@q"], "not valid JSON"),
    (["quantize", "--model", "@model", "--scheme", "int3", "--out", "@q"], "--scheme"),
    (["quantize", "--model", "@model", "--scheme", "int4", "--group-size", "48", "--out", "@q"], "--group-size"),
    (["quantize", "--model", "@model", "--scheme", "int8", "--group-size", "64", "--out", "@q"], "--group-size 64"),
    (["quantize", "--model", "@model", "--scheme", "int4", "--group-size", "64", "--out", "@q"], "group size 64"),
    (["quantize", "--model", "@model", "--scheme", "int8", "--lm-head", "fp8", "--out", "@q"], "--lm-head"),
    (["quantize", "--model", "@model", "--scheme", "int8", "--out", "@full"], "full"),
    (["quantize", "--model", "@model", "--scheme", "int8"], "--out"),
    (["quantize", "--model", "@model", "--scheme", "int8", "--method", "awq", "--out", "@q"], "--method"),
    (["quantize", "--model", "@bare", "--scheme", "int8", "--method", "gptq", "--out", "@q"], "bare"),
    # generic
    (["nosuchverb"], "nosuchverb"),
]


@pytest.mark.parametrize("argv, culprit", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(files, capsys, argv, culprit):
    argv = [R(a, files) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert R(culprit, files) in err, err


def test_the_battery_covers_every_verb():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    expected = set()
    for name, p in sub.choices.items():
        children = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not children:
            expected.add(name)
            continue
        for child in children[0].choices:
            expected.add(f"{name} {child}")
    verbs = {argv[0] if argv[0] in expected else " ".join(argv[:2]) for argv, _ in CASES}
    # fetching sources needs the network; the rest must all be covered
    missing = expected - verbs - {"data fetch"}
    assert not missing, f"verbs with no bad-input case: {sorted(missing)}"
    assert len(CASES) >= 60


def test_an_internal_error_keeps_its_traceback(monkeypatch, capsys):
    def boom(args):
        raise TypeError("a bug")

    monkeypatch.setattr(model_verbs, "cmd_info", boom)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "qwen2.5-7b"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" in err and "bug in qwen25" in err


def test_non_utf8_argument_bytes(files):
    out = subprocess.run([sys.executable.encode(), b"-m", b"qwen25.cli", b"tokenizer", b"encode", b"--text", b"\xff\xfe"],
                         capture_output=True, timeout=120)
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "--text" in err and "UTF-8" in err


def _as_from_a_shell():
    """The child starts with SIGINT at its default and no signal blocked, as a command typed in a shell does,
    whatever the test process inherited or changed (a child inherits ignored and blocked signals)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """SIGINT in the middle of training: one line, exit 130."""
    err_file = open(tmp_path / "stderr.txt", "w")  # a file, not a pipe: progress bars can never fill it and block
    proc = subprocess.Popen([sys.executable, "-m", "qwen25.cli", "longctx", "extrapolate", "--steps", "100000",
                             "--samples", "1"], stdout=subprocess.PIPE, stderr=err_file, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_as_from_a_shell)
    deadline = time.time() + 300
    seen = ""
    while "step" not in seen and time.time() < deadline:  # wait until it is training
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            seen += proc.stdout.readline()
    assert "step" in seen, "the run never started training"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    err_file.close()
    err = (tmp_path / "stderr.txt").read_text()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert proc.returncode == 130 and "Traceback" not in err and lines[-1].startswith("interrupted"), err[-2000:]


def test_readme_set_example_parses():
    from qwen25.pretraining.recipe import load_recipe

    r = load_recipe("recipes/tiny.toml", ["train.micro_batch=8", "stages.1.tokens=2e6"])
    assert r.stages[1].tokens == 2_000_000 and isinstance(r.stages[1].tokens, int)
    assert os.path.exists("recipes/tiny.toml") and torch is not None
