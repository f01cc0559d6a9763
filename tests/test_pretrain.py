"""Pretraining: SIGKILL + resume reproducing the same losses, bad data and recipes rejected before training,
stages with ABF recorded. (Gradient accumulation is tested on the trainer alone, in test_trainer.py.)"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from qwen25.data.shards import ShardError, ShardSet
from qwen25.pretraining.recipe import RecipeError, load_recipe
from qwen25.tokenizer import load_tokenizer
from tests.pretrain_helpers import recipe_text, run_cli, seed_run_dir


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """One full pipeline run (data prep + 2 short stages) whose data later tests reuse."""
    root = tmp_path_factory.mktemp("pretrain")
    recipe = root / "base.toml"
    recipe.write_text(recipe_text("base", root / "base"))
    out = run_cli("pretrain", "run", "--recipe", str(recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_pipeline_records_stages_and_report(prepared):
    run = prepared / "base"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in records if r.get("event") == "phase_start"]
    assert [(s["seq_len"], s["rope_theta"]) for s in starts] == [(64, 10000.0), (128, 1000000.0)]
    assert starts[1]["step"] == 8  # 4096 tokens / (8 x 64) = 8 steps in stage 1
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 8 + 5 and all(k in steps[0] for k in ("lr", "grad_norm", "tokens_per_s", "mfu", "memory_mb"))
    report = (run / "report.md").read_text()
    assert "![loss](loss.png)" in report and (run / "loss.png").stat().st_size > 10_000
    assert (run / "hf" / "config.json").is_file() and (run / "hf" / "tokenizer.json").is_file()
    assert json.loads((run / "hf" / "config.json").read_text())["rope_theta"] == 1e6


def test_sigkill_and_resume_reproduce_the_same_losses(prepared, tmp_path):
    recipe = tmp_path / "r.toml"
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    for d in (reference_dir, killed_dir):
        seed_run_dir(prepared / "base", d)
    recipe.write_text(recipe_text("ref", reference_dir))
    assert run_cli("pretrain", "run", "--recipe", str(recipe)).returncode == 0
    recipe.write_text(recipe_text("killed", killed_dir))
    proc = subprocess.Popen([sys.executable, "-m", "qwen25.cli", "pretrain", "run", "--recipe", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoints" / "step-00000005" / "trainer_state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into step 6 or 7
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = run_cli("pretrain", "run", "--recipe", str(recipe), "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout
    assert losses(killed_dir) == losses(reference_dir)  # bit-identical, step for step
    assert len(losses(reference_dir)) == 13


def test_resume_requires_flag_on_existing_run(prepared):
    recipe = prepared / "base.toml"
    out = run_cli("pretrain", "run", "--recipe", str(recipe))
    assert out.returncode != 0 and "pass --resume" in out.stderr + out.stdout


def test_recipe_unknown_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(recipe_text("bad", tmp_path / "bad", micro_bach=4))
    with pytest.raises(RecipeError, match=r"bad\.toml: train: unknown key 'micro_bach'"):
        load_recipe(path)
    path.write_text(recipe_text("bad", tmp_path / "bad") + "\n[optimiser]\nlr = 1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'optimiser'"):
        load_recipe(path)
    path.write_text(recipe_text("bad", tmp_path / "bad", micro_batch="four"))
    with pytest.raises(RecipeError, match=r"train\.micro_batch must be an integer"):
        load_recipe(path)
    path.write_text(recipe_text("bad", tmp_path / "bad", micro_bach=4))
    out = run_cli("pretrain", "run", "--recipe", str(path))
    assert out.returncode == 2 and "unknown key 'micro_bach'" in out.stderr


def test_overrides(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(recipe_text("t", tmp_path / "t"))
    r = load_recipe(path, ["train.micro_batch=2", "stages.1.tokens=999", "name=other"])
    assert r.train.micro_batch == 2 and r.stages[1].tokens == 999 and r.name == "other"
    with pytest.raises(RecipeError, match="no element 5"):
        load_recipe(path, ["stages.5.tokens=1"])


def test_bad_shards_fail_before_training(prepared, tmp_path):
    base = prepared / "base"
    tok = load_tokenizer(base / "tokenizer")
    shards = tmp_path / "shards"
    import shutil

    shutil.copytree(base / "data" / "shards" / "train", shards)
    shard = sorted(shards.glob("en/shard-*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{shard.name}: contents do not match the sha256"):
        ShardSet.open(shards, tokenizer=tok)
    shard.write_bytes(bytes(data[:-8]))
    with pytest.raises(ShardError, match=rf"{shard.name}: .* truncated"):
        ShardSet.open(shards, tokenizer=tok)
    with pytest.raises(ShardError, match="made with a different tokenizer"):
        ShardSet.open(base / "data" / "shards" / "heldout", tokenizer=load_tokenizer("qwen2.5"))
    (shards / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no shard manifest"):
        ShardSet.open(shards)


def test_run_with_foreign_or_truncated_shards_stops_before_training(prepared, tmp_path):
    run = tmp_path / "foreign"
    seed_run_dir(prepared / "base", run)
    manifest = run / "data" / "shards" / "train" / "manifest.json"
    raw = json.loads(manifest.read_text())
    good_hash, raw["tokenizer_sha256"] = raw["tokenizer_sha256"], "0" * 64
    manifest.write_text(json.dumps(raw))
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text("foreign", run))
    out = run_cli("pretrain", "run", "--recipe", str(recipe))
    assert out.returncode == 2 and "made with a different tokenizer" in out.stderr
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    raw["tokenizer_sha256"] = good_hash
    manifest.write_text(json.dumps(raw))
    shard = sorted(manifest.parent.glob("zh/shard-*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    out = run_cli("pretrain", "run", "--recipe", str(recipe))
    assert out.returncode == 2 and f"{shard.name}: " in out.stderr and "truncated" in out.stderr
    assert not (run / "metrics.jsonl").exists()


@pytest.mark.parametrize("path", ["recipes/tiny.toml", "recipes/gpu-100m.toml", "recipes/gpu-0.5b.toml"])
def test_shipped_recipes_are_valid(path):
    from pathlib import Path

    recipe = load_recipe(Path(__file__).parent.parent / path)
    assert len(recipe.stages) == 2 and recipe.stages[1].rope_theta > recipe.stages[0].rope_theta
    assert recipe.stages[1].seq_len > recipe.stages[0].seq_len
