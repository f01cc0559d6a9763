"""Long-context tasks and their scoring, the evaluation CLI end to end, and the extrapolation experiment."""

import os
import random
import subprocess
import sys

import pytest
import torch

from qwen25.cli import main
from qwen25.longctx import extrapolation
from qwen25.eval.longctx import Result, accuracy_table, greedy
from qwen25.eval.longctx_tasks import FILLER, TASKS, WORDS, Sample, make_sample, passkey, score
from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer.train import train_bbpe


def _trained_tokenizer():
    """A 512-token tokenizer of the project's design, trained on the tasks' own vocabulary."""
    return train_bbpe([FILLER * 10, " ".join(WORDS), "special magic numbers pass key VAR"] * 3, vocab_size=512,
                      min_frequency=1, show_progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    return _trained_tokenizer()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_samples_have_the_requested_length_and_their_answers(task, tokenizer):
    for length in (600, 2400):
        sample = make_sample(task, tokenizer, length, 0.3, seed=1)
        n = len(tokenizer.encode(sample.prompt))
        assert abs(n - length) <= 0.1 * length, (task, length, n)
        assert sample.answers and all(a in sample.prompt for a in sample.answers)
        assert score(sample, " ".join(sample.answers)) == 1.0
        assert make_sample(task, tokenizer, length, 0.3, seed=1) == sample  # reproducible
    assert make_sample(task, tokenizer, 600, 0.3, seed=2) != sample


def test_needle_depth_and_scoring(tokenizer):
    for depth in (0.0, 0.5, 1.0):
        sample = passkey(tokenizer, 3000, depth, random.Random(0))
        body = sample.prompt.split("\n\n", 1)[1]
        assert abs(body.index("The pass key is") / len(body) - depth) < 0.05
    sample = Sample("x", "", ("AB", "cd", "99"), 0.5, 8)
    assert score(sample, "ab and CD") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown task"):
        make_sample("niah", tokenizer, 100, 0.5, 0)


def test_accuracy_table():
    results = [Result("passkey", 1000, 998, 0.0, 1.0), Result("passkey", 1000, 998, 1.0, 0.0),
               Result("passkey", 2000, 1997, 0.0, 1.0), Result("niah_single", 1000, 1001, 0.0, 0.5)]
    assert accuracy_table(results).splitlines() == [
        "| task | 1000 | 2000 |", "|---|---|---|", "| passkey | 50.0 | 100.0 |", "| niah_single | 50.0 | - |"]
    assert accuracy_table(results, "depth").splitlines()[2:] == ["| 0 | 75.0 | 100.0 |", "| 1 | 0.0 | - |"]


def test_greedy_stops_at_a_stop_id():
    model = build_model(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, dtype="float32"), seed=0).eval()
    free = greedy(model, [1, 2, 3], 8)
    assert len(free) == 8
    assert greedy(model, [1, 2, 3], 8, prefill_chunk=2, stop_ids=[free[2]]) == free[:free.index(free[2]) + 1]


def test_eval_longctx_cli_end_to_end(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=10_000.0, dtype="float32")
    build_model(cfg, seed=0).save_pretrained(tmp_path)
    _trained_tokenizer().save(tmp_path)
    out = subprocess.run([sys.executable, "-m", "qwen25.cli", "eval", "longctx", "--model", str(tmp_path),
                          "--tasks", "passkey,variable_tracking", "--lengths", "300", "600", "--depths", "0", "1",
                          "--samples", "1", "--attention", "dca", "--chunk-size", "256", "--prefill-chunk", "128"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "| task | 300 | 600 |" in lines and "| depth | 300 | 600 |" in lines
    assert any(line.startswith("| variable_tracking | ") for line in lines)
    # The same entry point in-process, for the other settings and the errors.
    main(["eval", "longctx", "--model", str(tmp_path), "--tasks", "frequent_words", "--lengths", "400",
          "--samples", "1", "--rope", "dynamic-yarn", "--original-max-positions", "256", "--attention", "sparse",
          "--sparse-threshold", "0"])
    assert any(line.startswith("| frequent_words | ") for line in capsys.readouterr().out.splitlines())
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "longctx", "--model", str(tmp_path), "--rope", "yarn"])
    assert exit_.value.code == 2 and "needs 'factor'" in capsys.readouterr().err
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(SystemExit):
        main(["eval", "longctx", "--model", str(tmp_path)])
    assert "tokenizer.json" in capsys.readouterr().err


def test_extrapolation_sequences_and_a_short_run():
    ids, digits = extrapolation.make_batch(4, 64, torch.Generator().manual_seed(0))
    assert ids.shape == (4, 64) and torch.equal(ids[:, -5:], digits)
    assert (ids[:, -7] == extrapolation.QUERY).all() and (ids[:, -6] == extrapolation.KEY).all()
    for row in range(4):
        key = (ids[row, :-6] == extrapolation.KEY).nonzero()[:, 0]
        assert len(key) == 1 and torch.equal(ids[row, key + 1:key + 6], digits[row])
        assert len(set(digits[row].tolist())) == 5
    table = extrapolation.run(64, [1, 2], steps=2, batch=4, lr=1e-3, samples=2, seed=0, log=lambda _: None)
    lines = table.splitlines()
    assert lines[0] == "| method | 1L = 64 | 2L = 128 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {m}" for m in extrapolation.METHODS]
