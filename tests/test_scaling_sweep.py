"""The scaling sweep's mechanics on a tiny grid (about a second per run): run identity, resumability (finished runs
skipped, a grid that grows trains only its new points, a run trained again gives the same loss), shards that
partition the grid, run claiming, concurrent appends; and `validate` end to end on a fit drawn from known laws."""

import json
import multiprocessing
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen25.scaling.recipe import grid, load_scaling_recipe
from qwen25.scaling.results import append_result, read_results
from qwen25.scaling.sweep import claim, plan, prepare_data, release, run_sweep
from qwen25.scaling.validate import run_validation

RECIPE = """
name = "t"
seed = 5
run_dir = "{run}"
[tokenizer]
vocab_size = 512
train_bytes = 200_000
[data]
bytes_per_domain = {{ code = 120_000, en = 120_000, zh = 120_000, math = 40_000 }}
heldout_per_mille = 100
workers = 1
[train]
micro_batch = 4
dtype = "float32"
eval_batches = 2
checkpoint_every = 0
[sweep]
seq_len = 32
tokens = [1024]
lrs = [{lrs}]
batches = [4]
curve_points = 2
[[models]]
name = "a"
overrides = {{ hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }}
{extra}
"""

HELDOUT = """
[heldout]
lr_factors = [0.5]
[heldout.dense]
name = "big"
overrides = { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }
tokens = [2048]
[heldout.moe]
name = "moe"
preset = "qwen25-moe-tiny"
overrides = { hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1, num_experts = 4, num_experts_per_tok = 1, moe_intermediate_size = 16, shared_expert_intermediate_size = 16 }
tokens = [1024]
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small run fastest on one thread (and a loaded machine punishes thread hand-offs per op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_recipe(path, run, lrs=(1e-2, 3e-2), extra=""):
    path.write_text(RECIPE.format(run=run, lrs=", ".join(map(str, lrs)), extra=extra))
    return load_scaling_recipe(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Corpus, tokenizer and shards of the tiny recipe, built once; tests copy them into their own run dirs."""
    root = tmp_path_factory.mktemp("scaling")
    recipe = write_recipe(root / "base.toml", root / "base")
    prepare_data(recipe, log=lambda *_: None)
    return root / "base"


def seeded(prepared, tmp_path, **kwargs):
    run = tmp_path / "run"
    run.mkdir()
    for part in ("data", "tokenizer"):
        shutil.copytree(prepared / part, run / part)
    return write_recipe(tmp_path / "r.toml", run, **kwargs)


def test_run_identity_follows_the_settings_that_change_results(tmp_path):
    base = write_recipe(tmp_path / "a.toml", tmp_path / "a")
    ids = [s.id for s in grid(base)]
    assert len(set(ids)) == 2
    same = [load_scaling_recipe(tmp_path / "a.toml", [o]) for o in
            ("train.micro_batch=2", "data.workers=2", "models.0.name=renamed", f"run_dir={tmp_path / 'b'}")]
    for r in same:
        assert [s.id for s in grid(r)] == ids
    for override in ("seed=6", "sweep.seq_len=16", "sweep.schedule=cosine", "train.weight_decay=0.0",
                     "models.0.overrides.hidden_size=32", "data.mixture.code=0.5", "sweep.tokens=[2048]"):
        changed = [s.id for s in grid(load_scaling_recipe(tmp_path / "a.toml", [override]))]
        assert not set(changed) & set(ids), override


def test_finished_runs_keep_their_ids_when_the_data_section_grows_an_optional_field():
    """The CPU sweep's records (docs/scaling.md) were written before `data.pipeline` existed; a field at its
    off value must not rename them, and a pipeline that is set must."""
    root = Path(__file__).resolve().parents[1]
    recipe = load_scaling_recipe(root / "recipes/scaling-cpu.toml")
    first = next(s for s in grid(recipe) if (s.model.name, s.tokens, s.lr, s.batch) == ("d6k", 250_000, 0.006, 8))
    assert first.id == "61f9fd8b7e5e9e57"  # its id in runs/scaling-cpu/results.jsonl
    piped = load_scaling_recipe(root / "recipes/scaling-cpu.toml", [f"data.pipeline={root / 'recipes/data-tiny.toml'}"])
    assert not {s.id for s in grid(piped)} & {s.id for s in grid(recipe)}


def test_shards_partition_the_grid(tmp_path):
    r = write_recipe(tmp_path / "a.toml", tmp_path / "a", lrs=[1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2])
    every = {s.id for s in grid(r)}
    slices = [{s.id for s in plan(r, (i, 3))} for i in range(3)]
    assert set().union(*slices) == every and sum(map(len, slices)) == len(every)


def test_sweep_trains_records_resumes_and_grows(prepared, tmp_path):
    r = seeded(prepared, tmp_path)
    new = run_sweep(r, log=lambda *_: None)
    assert len(new) == 2
    records = read_results(r.directory / "results.jsonl")
    for rec in records:
        assert rec["steps"] == 8 and rec["tokens"] == 1024 and rec["batch_tokens"] == 128
        assert rec["final_loss"] == rec["curve"][-1][2] < rec["initial_loss"] == rec["curve"][0][2]
        assert rec["params_non_embedding"] < rec["params_total"] and not rec["diverged"]
    assert not (r.directory / "runs" / records[0]["id"] / "checkpoints").exists()
    assert run_sweep(r, log=lambda *_: None) == []  # everything finished: nothing trains
    # a grid that grows trains only its new point
    grown = load_scaling_recipe(tmp_path / "r.toml", ["sweep.lrs=[1e-2, 3e-2, 2e-2]"])
    assert [x["lr"] for x in run_sweep(grown, log=lambda *_: None)] == [2e-2]
    # a run trained again (its record removed) reaches the same loss: same init, data order and held-out windows
    path = r.directory / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")
    again = run_sweep(r, log=lambda *_: None)
    assert len(again) == 1 and again[0]["id"] == records[0]["id"]
    assert again[0]["final_loss"] == pytest.approx(records[0]["final_loss"], abs=1e-6)


def test_claim_respects_live_owners_and_takes_over_dead_ones(tmp_path):
    locks = tmp_path / "locks"
    assert claim(locks, "abc")
    assert not claim(locks, "abc")  # held by this (live) process
    release(locks, "abc")
    proc = subprocess.Popen(["true"])
    proc.wait()
    (locks / "dead").write_text(f"{socket.gethostname()} {proc.pid}")
    assert claim(locks, "dead")
    (locks / "remote").write_text(f"another-host-{socket.gethostname()} 1")
    assert not claim(locks, "remote")


def _append_many(path, worker):
    for k in range(15):
        append_result(path, {"worker": worker, "k": k, "pad": "x" * 2000})


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["worker"], r["k"]) for r in rows) == [(w, k) for w in range(4) for k in range(15)]


def test_results_file_errors_name_the_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: not a sweep record \(missing model"):
        read_results(path)
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        read_results(tmp_path / "nothere.jsonl")


def fake_results(recipe, path):
    """A sweep whose optima follow known laws, at sizes below the held-out shape (the fit only reads records)."""
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for n in (300, 600, 1200, 2400):
            for d in (256, 512, 1024):
                mu, bt = 0.3 * n**-0.3 * d**0.1, 2.0 * d**0.5
                for kind, n_tot in (("dense", n), ("moe", 3 * n)) if n == 600 else (("dense", n),):
                    for fb in (0.5, 1, 2):
                        for fl in (0.5, 1, 2):
                            n_eff = n * (n_tot / n) ** 0.5
                            loss = 2 + 30 / n_eff**0.3 + 40 / d**0.3 + 0.1 * np.log(fl) ** 2 + 0.1 * np.log(fb) ** 2
                            f.write(json.dumps({
                                "id": f"{kind}{n}-{d}-{fl}-{fb}", "model": f"{kind}{n}", "kind": kind,
                                "params_non_embedding": n_tot, "params_total": n_tot + 9000,
                                "params_activated_non_embedding": n, "params_activated": n + 9000,
                                "tokens_target": d, "lr": mu * fl, "batch_tokens": bt * fb, "seq_len": 32,
                                "final_loss": loss + rng.normal(0, 0.002), "diverged": False,
                                "settings": {"model": f"{kind}{n}", "tokens": d}}) + "\n")


def test_validate_trains_the_held_out_runs_and_writes_the_doc(prepared, tmp_path):
    r = seeded(prepared, tmp_path, extra=HELDOUT)
    fake_results(r, r.directory / "results.jsonl")
    doc = tmp_path / "docs" / "scaling.md"
    doc.parent.mkdir()
    doc.write_text("# Scaling\n\nhand-written text\n")
    table = run_validation(r, doc, replicates=200, log=lambda *_: None)
    held = read_results(r.directory / "heldout.jsonl")
    assert len(held) == 3  # dense at the predicted LR and at 0.5 x; the MoE at its predicted LR
    dense = [h for h in held if h["model"] == "big"]
    assert sorted(h["lr"] for h in dense)[1] == pytest.approx(2 * sorted(h["lr"] for h in dense)[0])
    text = doc.read_text()
    assert text.startswith("# Scaling\n\nhand-written text\n")
    assert "<!-- results-fit:begin -->" in text and "<!-- results-heldout:end -->" in text
    assert "big at the predicted LR" in table and "matches a dense model of" in table
    assert (tmp_path / "docs" / "scaling" / "results" / "laws.png").is_file()
    assert "](scaling/results/laws.png)" in text
    # a second validate (given the path as text, as the CLI does) trains nothing new and replaces its sections
    run_validation(r, str(doc), replicates=200, log=lambda *_: None)
    assert len(read_results(r.directory / "heldout.jsonl")) == 3
    assert doc.read_text().count("<!-- results-fit:begin -->") == 1


@pytest.mark.parametrize("name", ["scaling-cpu", "scaling-smoke", "scaling-gpu"])
def test_shipped_recipes_hold_a_valid_grid_and_a_held_out_check_beyond_it(name):
    """Each shipped recipe loads and validates; its held-out dense shape is larger than every shape of the grid in
    N (activated, as the fit counts) and trains on more tokens than any grid run (what `validate` requires)."""
    from qwen25.model import build_model
    from qwen25.scaling.recipe import model_config
    from qwen25.scaling.sweep import describe_params

    recipe = load_scaling_recipe(f"recipes/{name}.toml")
    runs = grid(recipe)
    assert len(runs) >= 10 and len({r.id for r in runs}) == len(runs)

    def n(entry):
        cfg = model_config(entry, recipe.tokenizer.vocab_size, None, recipe.sweep.seq_len)
        return describe_params(build_model(cfg, device="meta"))["params_activated_non_embedding"]

    assert n(recipe.heldout.dense) > max(n(r.model) for r in runs)
    assert recipe.heldout.dense.tokens[0] > max(r.tokens for r in runs)
    assert recipe.heldout.moe is not None
    assert {r.model.name for r in runs if r.model.overrides.get("num_experts", 0)}, "the grid has MoE shapes"
