"""The `qwen25` command line."""

import subprocess
import sys

from qwen25.model import build_model, get_preset


def run(*args):
    return subprocess.run([sys.executable, "-m", "qwen25.cli", *args], capture_output=True, text=True, timeout=120)


def test_info_7b_and_05b():
    out = run("info", "qwen2.5-7b")
    assert out.returncode == 0, out.stderr
    assert "7,615,616,512 (7.62B)" in out.stdout and "6,525,621,760 (6.53B)" in out.stdout
    out = run("info", "qwen2.5-0.5b")
    assert "494,032,768" in out.stdout


def test_generate_from_checkpoint_directory(tmp_path):
    cfg, _ = get_preset("qwen25-tiny")
    build_model(cfg, seed=0).save_pretrained(tmp_path)
    out = run("generate", "--model", str(tmp_path), "--prompt-ids", "1 2 3", "--max-new-tokens", "6", "--greedy")
    assert out.returncode == 0, out.stderr
    tokens = [int(t) for t in out.stdout.split()]
    assert len(tokens) == 6 and all(0 <= t < cfg.vocab_size for t in tokens)
    info = run("info", str(tmp_path))
    assert "qwen25-tiny" not in info.stdout and "total parameters" in info.stdout


def test_bad_model_is_a_clear_error():
    out = run("info", "qwen2.5-9b")
    assert out.returncode == 2 and "unknown preset 'qwen2.5-9b'" in out.stderr
    out = run("generate", "--model", "qwen25-tiny", "--prompt-ids", "1 99999")
    assert out.returncode != 0 and "outside the vocabulary" in out.stderr


def test_info_moe_total_and_activated():
    out = run("info", "qwen1.5-moe-a2.7b")
    assert out.returncode == 0, out.stderr
    assert "total parameters:          14,315,784,192 (14.32B)" in out.stdout
    assert "activated parameters:       2,689,173,504 (2.69B)" in out.stdout
    out = run("info", "qwen2-57b-a14b")
    assert "(57.41B)" in out.stdout and "activated parameters:      14,249,270,784 (14.25B)" in out.stdout


def test_generate_refuses_or_clamps_past_the_models_positions(tmp_path):
    cfg, _ = get_preset("qwen25-tiny")
    cfg.max_position_embeddings = 8
    build_model(cfg, seed=0).save_pretrained(tmp_path)
    out = run("generate", "--model", str(tmp_path), "--prompt-ids", "1 2 3 4 5 6 7 8", "--greedy")
    assert out.returncode == 2 and "8 positions" in out.stderr and len(out.stderr.splitlines()) == 1
    out = run("generate", "--model", str(tmp_path), "--prompt-ids", "1 2 3 4 5", "--max-new-tokens", "10", "--greedy")
    assert out.returncode == 0, out.stderr
    assert "clamped to 3" in out.stderr and len(out.stdout.split()) == 3
