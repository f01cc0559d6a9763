"""The same trainer under torchrun: 2 gloo processes with FSDP2 (and with DDP) follow the 1-process loss
curve, and a checkpoint saved by 2 processes resumes in 1."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.pretrain_helpers import recipe_text, run_cli, seed_run_dir
from tests.test_pretrain import losses, prepared  # noqa: F401  (shared session fixture)


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "-m", "qwen25.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_process_fsdp_matches_one_process(prepared, tmp_path, parallel):  # noqa: F811
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        seed_run_dir(prepared / "base", d)
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text("one", one, max_steps=10, parallel="none"))
    out = run_cli("pretrain", "run", "--recipe", str(recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    recipe2 = tmp_path / "r2.toml"
    recipe2.write_text(recipe_text("two", two, max_steps=10, parallel=parallel))
    out = torchrun(2, "pretrain", "run", "--recipe", str(recipe2))
    assert out.returncode == 0, out.stderr[-5000:]
    reference, sharded = losses(one), losses(two)
    assert sorted(reference) == sorted(sharded) == list(range(1, 11))
    for step in reference:
        assert abs(reference[step] - sharded[step]) < 1e-4, (step, reference[step], sharded[step])

    # the 2-process checkpoint at step 5 continues in a single process
    resumed = tmp_path / "resumed"
    seed_run_dir(prepared / "base", resumed)
    (resumed / "checkpoints").mkdir()
    shutil.copytree(two / "checkpoints" / "step-00000005", resumed / "checkpoints" / "step-00000005")
    kept = [line for line in (two / "metrics.jsonl").read_text().splitlines() if json.loads(line).get("step", 0) <= 5]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    recipe3 = tmp_path / "r3.toml"
    recipe3.write_text(recipe_text("resumed", resumed, max_steps=10, parallel="none"))
    out = run_cli("pretrain", "run", "--recipe", str(recipe3), "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    continued = losses(resumed)
    for step in range(6, 11):
        assert abs(continued[step] - reference[step]) < 1e-4, (step, continued[step], reference[step])
