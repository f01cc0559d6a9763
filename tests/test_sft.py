"""SFT: packing is exact (a packed batch trains as its conversations one by one), the loss equals TRL's
assistant-only loss, bad data is reported by file and line, and a transformers checkpoint fine-tunes and exports
to a directory transformers loads."""

from __future__ import annotations

import json
import os

import pytest
import torch

from qwen25.model import ModelConfig, build_model
from qwen25.posttraining.conversations import (
    ConversationError,
    EncodeStats,
    encode_conversation,
    load_examples,
    normalise_messages,
)
from qwen25.posttraining.packing import pack, plan_rows
from qwen25.tokenizer import load_tokenizer
from qwen25.training.losses import causal_lm_loss, count_target_tokens
from tests.pretrain_helpers import run_cli

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                                           "b": {"type": "integer"}}}}}]
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                  {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again, in Chinese."},
                  {"role": "assistant", "content": "你好。"}]},
    {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Add 17 and 25."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 17, \"b\": 25}"}}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "17 + 25 = 42."}]},
    {"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]},
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("qwen2.5")


def small_model(seed=0):
    cfg = ModelConfig(vocab_size=151665, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, dtype="float32", tie_word_embeddings=True)
    return build_model(cfg, seed=seed)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def examples(tok):
    return [encode_conversation(tok, normalise_messages(c["messages"], f"c{i}"), c.get("tools"), f"c{i}")
            for i, c in enumerate(CONVERSATIONS)]


def test_packed_batch_trains_exactly_as_its_conversations_one_by_one(tok):
    exs = examples(tok)
    assert any("<tool_call>" in tok.decode(e.ids.tolist()) for e in exs)
    seq_len = sum(len(e) for e in exs[:3]) + 5
    rows = plan_rows([len(e) for e in exs], seq_len, range(len(exs)))
    assert rows == [[0, 1, 2], [3]]  # three conversations share the first row, with padding at the end
    batch = pack(exs, rows, seq_len, tok.pad_id)
    model = small_model()
    packed = causal_lm_loss(model, batch)
    packed.loss_sum.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total, units = 0.0, 0
    for e in exs:
        alone = pack([e], [[0]], len(e), tok.pad_id)
        out = causal_lm_loss(model, alone)
        out.loss_sum.backward()
        total += out.loss_sum.item()
        units += out.n_units
    assert packed.n_units == units == sum(e.n_targets for e in exs)
    assert abs(packed.loss_sum.item() - total) <= 1e-5 * max(1.0, abs(total))
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, rtol=1e-5, atol=1e-5)


def test_labels_are_assistant_tokens_only(tok):
    e = examples(tok)[2]  # the tool-call conversation
    trained = [int(e.ids[t + 1]) for t in range(len(e) - 1) if e.target[t]]
    text = tok.decode(trained)
    assert "<tool_call>" in text and '"arguments": {"a": 17, "b": 25}' in text and "17 + 25 = 42." in text
    assert "Add 17 and 25" not in text and "<tool_response>" not in text and "42\n</tool_response>" not in text
    assert text.count("<|im_end|>") == 2  # each assistant turn's closing token is trained


def test_loss_equals_trl_assistant_only_loss(tok, tmp_path):
    """TRL 1.16's SFTTrainer.compute_loss on the same model, conversations and assistant masks."""
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=151665, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                      rope_theta=1e6)).float()
    hf.save_pretrained(tmp_path / "hf")
    from qwen25 import from_pretrained

    ours = from_pretrained(tmp_path / "hf", dtype=torch.float32)
    exs = examples(tok)
    rows = [{"input_ids": e.ids.tolist(), "labels": [-100] + [int(e.ids[t + 1]) if e.target[t] else -100
                                                                for t in range(len(e) - 1)]} for e in exs]
    args = SFTConfig(output_dir=str(tmp_path / "trl"), bf16=False, report_to=[], per_device_train_batch_size=4,
                     use_cpu=True, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    trainer = SFTTrainer(model=hf, args=args, train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(tok.path))
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(hf, batch).item()
        packed = pack(exs, plan_rows([len(e) for e in exs], 400, range(len(exs))), 400, tok.pad_id)
        out = causal_lm_loss(ours, packed)
    assert abs(out.loss_sum.item() / out.n_units - trl_loss) <= 1e-5


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}', r"bad\.jsonl:2: not valid JSON"),
    ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     r"bad\.jsonl:2: messages\[0\]: unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": "add"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": "{a: 1"}}]}]},
     r"bad\.jsonl:2: messages\[1\]\.tool_calls\[0\]: arguments are not JSON"),
    ({"messages": [{"role": "user", "content": "hello"}]}, r"bad\.jsonl:2: no assistant turn"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
     r"bad\.jsonl:2: messages\[0\] \(user\): 'content' must be a string"),
    ({"conversation": []}, r"bad\.jsonl:2: expected an object with a 'messages' list"),
])
def test_bad_data_names_file_and_line(tok, tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [CONVERSATIONS[0], line])
    with pytest.raises(ConversationError, match=message):
        load_examples([path], tok, 512)


def test_overlong_conversations_dropped_or_truncated_and_counted(tok, tmp_path):
    long = {"messages": [{"role": "user", "content": "Repeat."}, {"role": "assistant", "content": "word " * 300}]}
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATIONS[0], long, CONVERSATIONS[3]])
    stats = EncodeStats()
    kept = load_examples([path], tok, 100, "drop", stats)
    assert len(kept) == 2 and stats.dropped == {"longer than 100 tokens": 1} and stats.truncated == 0
    stats = EncodeStats()
    kept = load_examples([path], tok, 100, "truncate", stats)
    assert len(kept) == 3 and stats.truncated == 1 and max(len(e) for e in kept) == 100
    assert not kept[1].target[-1]  # the cut-off next token is not a target


@pytest.mark.slow
def test_sft_from_a_transformers_checkpoint_exports_what_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=151665, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "start")
    load_tokenizer("qwen2.5").save(tmp_path / "start")
    data = write_jsonl(tmp_path / "train.jsonl", CONVERSATIONS * 4)
    held = write_jsonl(tmp_path / "held.jsonl", CONVERSATIONS[:2])
    recipe = tmp_path / "sft.toml"
    recipe.write_text(f"""
name = "t"
run_dir = "{tmp_path / 'run'}"
lr = 1e-3
min_lr = 1e-4
[model]
path = "{tmp_path / 'start'}"
[train]
micro_batch = 2
dtype = "float32"
eval_every = 2
checkpoint_every = 2
[[phases]]
name = "general"
data = ["{data}"]
heldout = ["{held}"]
epochs = 2
seq_len = 256
batch = 2
""")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = run_cli("sft", "run", "--recipe", str(recipe), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) >= 3 and evals[-1] < evals[0]
    exported = tmp_path / "run" / "hf" / "general"
    loaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "start", dtype=torch.float32)
    changed = [n for n, p in loaded.named_parameters() if not torch.equal(p, dict(start.named_parameters())[n])]
    assert changed  # fine-tuned, and loadable by transformers unchanged
    assert json.loads((exported / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    write_jsonl(data, CONVERSATIONS * 3)  # the data changed: resuming would train on other rows
    out = run_cli("sft", "run", "--recipe", str(recipe), "--resume", env=env)
    assert out.returncode == 2 and "changed since the checkpoint" in out.stderr, out.stderr[-2000:]
    # `pretrain export` takes any stage's checkpoint: the tokenizer comes from the SFT recipe's model directory
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    out = run_cli("pretrain", "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "again"), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32)
    assert all(torch.equal(p, dict(loaded.named_parameters())[n]) for n, p in again.named_parameters())
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
