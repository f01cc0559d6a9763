"""Reward model: the saved directory loads in transformers as Qwen2ForSequenceClassification with the same scores,
the Bradley-Terry loss is -log sigmoid of the margin, and a short training run learns the pairs and reports
pairwise accuracy per category."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from qwen25 import from_pretrained
from qwen25.posttraining.pairs import collate_pairs, load_pairs
from qwen25.posttraining.rm import from_causal_lm, load_reward_model, save_reward_model
from qwen25.tokenizer import load_tokenizer
from qwen25.training.losses import bradley_terry_loss
from tests.align_helpers import PAIRS, tiny_hf_model, write_jsonl
from tests.pretrain_helpers import run_cli


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("qwen2.5")


def test_bradley_terry_loss():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    expected = -F.logsigmoid(chosen - rejected).mean()
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected)
    assert bradley_terry_loss(torch.tensor([10.0]), torch.tensor([-10.0])) < 1e-8


def test_saved_reward_model_scores_equal_transformers(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    lm = from_pretrained(tiny_hf_model(tmp_path / "lm"), dtype=torch.float32)
    rm = from_causal_lm(lm, tok.pad_id, seed=3).eval()
    rm.generation_config = {}
    out = save_reward_model(rm, tmp_path / "rm", tok)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and config["pad_token_id"] == tok.pad_id
    pairs = load_pairs([write_jsonl(tmp_path / "p.jsonl", PAIRS)], tok, 512)
    batch = collate_pairs(pairs, range(len(pairs)), tok.pad_id)  # right-padded rows of different lengths
    hf = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.num_labels == 1
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, attention_mask=(batch.input_ids != tok.pad_id).long()).logits[:, 0]
        ours = rm(batch.input_ids, last=batch.last)
        default_last = rm(batch.input_ids)  # transformers' rule: the last token that is not padding
        reloaded = load_reward_model(out)(batch.input_ids, last=batch.last)
    assert (theirs - ours).abs().max() <= 1e-5
    assert torch.equal(ours, default_last) and torch.equal(ours, reloaded)
    assert ours.std() > 0


@pytest.mark.slow
def test_rm_training_learns_the_pairs_and_reports_per_category(tmp_path):
    start = tiny_hf_model(tmp_path / "start")
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS * 4)
    recipe = tmp_path / "rm.toml"
    recipe.write_text(f"""
name = "t"
run_dir = "{tmp_path / 'run'}"
lr = 3e-3
min_lr = 3e-4
[model]
path = "{start}"
[data]
train = ["{data}"]
heldout = ["{data}"]
epochs = 3
pairs_per_step = 4
max_len = 256
[train]
micro_batch = 2
dtype = "float32"
eval_every = 4
checkpoint_every = 6
""")
    out = run_cli("rm", "train", "--recipe", str(recipe), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] and evals[-1]["eval_accuracy"] == 1.0
    result = json.loads((tmp_path / "run" / "rm_eval.json").read_text())
    assert set(result) == {"split", "all", "math", "conciseness", "instructions"}
    assert result["all"]["pairs"] == 16 and result["all"]["accuracy"] == 1.0
