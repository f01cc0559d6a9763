"""GRPO: advantages equal TRL's, the loss equals TRL's GRPOTrainer._compute_loss for each aggregation mode, the
variance order and the zero-variance accounting behave as specified on a fake reward, and a tiny run trains,
evaluates and exports."""

import json
import os

import pytest
import torch

from qwen25 import from_pretrained
from qwen25.data.queries import Query, write_queries
from qwen25.posttraining.grpo import GRPORecipe, GRPOSource, collate_samples, completion_logps, make_grpo_loss
from qwen25.posttraining.query_order import VarianceOrder
from qwen25.posttraining.rollouts import EngineRollouts, RolloutResult
from qwen25.tokenizer import load_tokenizer
from qwen25.training.losses import grpo_advantages, grpo_loss
from qwen25.training.recipe import RecipeError
from tests.align_helpers import tiny_hf_model
from tests.pretrain_helpers import run_cli


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("qwen2.5")


def test_advantages_equal_trl():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
    grouped = rewards.view(-1, 4)
    mean = grouped.mean(1).repeat_interleave(4)
    expected = (rewards - mean) / (nanstd(grouped, dim=1).repeat_interleave(4) + 1e-4)
    torch.testing.assert_close(grpo_advantages(rewards, 4), expected)
    torch.testing.assert_close(grpo_advantages(rewards, 4, scale=False), rewards - mean)
    assert torch.equal(grpo_advantages(rewards, 4)[4:8], torch.zeros(4))  # equal rewards: no signal
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(rewards, 5)


@pytest.mark.parametrize("ours, theirs", [("token_mean", "bnpo"), ("sequence_mean", "grpo"), ("dr_grpo", "dr_grpo")])
def test_loss_equals_trl_for_each_aggregation(tok, tmp_path, ours, theirs):
    """TRL 1.16's GRPOTrainer._compute_loss on fixed completions, advantages, pi_old and reference log-probs (fp32,
    beta 0.04, clipping active). TRL's "bnpo" is the token mean over the batch (its "dapo" is the same mean taken
    over the whole generation batch: equal here, one batch in one process). TRL 1.16 multiplies the KL term by
    the importance ratio by default (`use_bias_correction_kl`); the report's k3 term (DeepSeekMath's GRPO) has no
    such weight, so the comparison turns it off."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    path = tiny_hf_model(tmp_path / "m")
    prompt = tok.encode_chat([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True)[0]
    completions = [tok.encode_ordinary(t) + [tok.control_ids["<|im_end|>"]]
                   for t in ("5", "2 + 3 = 5. The answer is 5.", "6", "The answer is 7, I think")]
    max_len = 16
    g = torch.Generator().manual_seed(0)
    advantages = torch.tensor([1.2, 0.4, -0.9, -0.7])
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), bf16=False, report_to=[], use_cpu=True, beta=0.04,
                      loss_type=theirs, num_generations=4, per_device_train_batch_size=4,
                      max_completion_length=max_len, epsilon=0.2, use_bias_correction_kl=False)
    trainer = GRPOTrainer(model=str(path), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                          args=args, train_dataset=Dataset.from_list([{"prompt": "x"}] * 4))
    width = max(map(len, completions))
    completion_ids = torch.full((4, width), tok.pad_id)
    completion_mask = torch.zeros(4, width, dtype=torch.long)
    for i, c in enumerate(completions):
        completion_ids[i, :len(c)], completion_mask[i, :len(c)] = torch.tensor(c), 1
    old = -torch.rand(4, width, generator=g) * 3
    ref = -torch.rand(4, width, generator=g) * 3
    inputs = {"prompt_ids": torch.tensor([prompt] * 4), "prompt_mask": torch.ones(4, len(prompt), dtype=torch.long),
              "completion_ids": completion_ids, "completion_mask": completion_mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
    trainer.model.eval()  # no gradient-accumulation divisor (and no dropout in either model)
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs).item()

    model = from_pretrained(path, dtype=torch.float32)
    batch = collate_samples([prompt] * 4, completions, advantages, tok.pad_id)
    our_old, our_ref = torch.zeros(batch.labels.shape), torch.zeros(batch.labels.shape)
    for i, c in enumerate(completions):  # TRL's [B, completion] layout -> ours (label positions of the row)
        our_old[i, len(prompt) - 1:len(prompt) - 1 + len(c)] = old[i, :len(c)]
        our_ref[i, len(prompt) - 1:len(prompt) - 1 + len(c)] = ref[i, :len(c)]
    batch.old_logps, batch.ref_logps = our_old, our_ref
    with torch.no_grad():
        out = make_grpo_loss(ours, 0.2, 0.2, 0.04, max_len)(model, batch)
        logps, _ = completion_logps(model, batch)
    assert abs(out.loss_sum.item() / out.n_units - trl_loss) <= 1e-5 * max(1.0, abs(trl_loss)), (out, trl_loss)
    direct = grpo_loss(logps, our_old, advantages, batch.mask, ours, beta=0.04, ref_logps=our_ref,
                       max_completion_length=max_len)
    assert abs(direct.item() - trl_loss) <= 1e-5 * max(1.0, abs(trl_loss))
    assert float(out.logs["clipped"]) > 0  # the clipped branch was exercised


def test_variance_order_highest_first_and_refreshed_every_n_steps():
    calls = []
    variances = {"a": 0.0, "b": 0.25, "c": 0.1, "d": 0.21, "e": 0.09, "f": 0.0}

    def scorer(ids):
        calls.append(list(ids))
        if len(calls) == 2:  # the second scoring sees a changed policy: "f" became informative
            return {i: (0.3 if i == "f" else variances[i]) for i in ids}
        return {i: variances[i] for i in ids}

    order = VarianceOrder(list("abcdef"), scorer, refresh_every=2, seed=0)
    assert order.take(2, step=0) == ["b", "d"]  # scored at the start of the pass, highest variance first
    assert len(calls) == 1 and sorted(calls[0]) == list("abcdef")
    assert order.take(1, step=1) == ["c"]  # not due yet
    assert order.take(1, step=2) == ["f"]  # refreshed (2 steps later): only the rest of the pass was scored
    assert len(calls) == 2 and sorted(calls[1]) == list("aef")
    rest = order.take(3, step=3)  # "e" and "a" end the pass; a new pass starts and is scored again
    assert rest == ["e", "a", "b"] and len(calls) == 3 and sorted(calls[2]) == list("abcdef")
    state = order.state_dict()
    again = VarianceOrder(list("abcdef"), scorer, refresh_every=2, seed=0)
    again.load_state_dict(state)
    assert again.take(2, step=4) == order.take(2, step=4)

    window = VarianceOrder(list("abcdef"), lambda ids: {i: variances[i] for i in ids}, refresh_every=2, seed=0,
                           lookahead=3)
    taken = window.take(3, step=0)  # only the first 3 of the shuffled pass were scored and sorted
    assert len(window.scores) == 3 and taken == sorted(window.scores, key=lambda q: -variances[q])

    shuffled = VarianceOrder(list("abcdef"), None, refresh_every=2, seed=0)
    assert sorted(shuffled.take(6, step=0)) == list("abcdef")  # without a scorer: each pass is a shuffle


def _fake_setup(tok, skip):
    """Six queries whose G=4 samples pass 0, 4, 2, 1, 3 and 0 times: three groups (two all fail, one all pass)
    have equal rewards. Samples are the texts "0".."3"; sample j of a query passes when j < its pass count."""
    passes = {"q0": 0, "q1": 4, "q2": 2, "q3": 1, "q4": 3, "q5": 0}
    queries = [Query(q, "math", [{"role": "user", "content": f"question {q}"}], {"kind": "math", "reference": "1"}, "t")
               for q in passes]
    recipe = GRPORecipe(queries=["-"], seed=3)
    recipe.rollout.group_size, recipe.rollout.queries_per_step, recipe.rollout.steps_per_rollout = 4, 6, 2
    recipe.order.samples, recipe.order.refresh_every, recipe.order.skip_zero_variance = 4, 100, skip
    recipe.train.micro_batch = 4

    def rollouts(prompts, group_size, params, seed):
        return RolloutResult([tok.encode_ordinary(str(j)) + [tok.control_ids["<|im_end|>"]]
                              for _ in prompts for j in range(group_size)])

    def reward(qs, texts):
        return [float(int(t) < passes[q.id]) for q, t in zip(qs, texts)]

    source = GRPOSource(recipe, queries, tok, rollouts, reward)
    reports = []
    source.report = reports.append
    return source, reports


@pytest.mark.parametrize("skip", [False, True])
def test_zero_variance_groups_are_counted_and_optionally_skipped(tok, skip):
    source, reports = _fake_setup(tok, skip)
    first = source.next_step()
    (report,) = reports
    assert report["groups"] == 6 and report["zero_variance_share"] == pytest.approx(3 / 6)
    assert report["pass_rate"] == pytest.approx(10 / 24) and report["trained_groups"] == (3 if skip else 6)
    second = source.next_step()  # the same rollout batch, second optimizer step
    assert len(reports) == 1
    batches = first + second
    samples = sum(b.input_ids.shape[0] for b in batches)
    assert samples == (12 if skip else 24)
    advantages = torch.cat([b.advantages for b in batches])
    assert (advantages == 0).sum() == (0 if skip else 12)  # all-equal groups carry exactly zero advantage
    source.next_step()
    assert len(reports) == 2 and source.totals == {"groups": 12, "zero_variance_groups": 6}


def test_skipping_when_every_group_is_equal_is_an_error(tok):
    source, _ = _fake_setup(tok, skip=True)
    source.reward = lambda qs, texts: [1.0] * len(texts)
    with pytest.raises(ValueError, match="had equal rewards"):
        source.next_step()


def test_engine_rollouts_share_one_prefill_per_group_and_return_the_policys_logprobs(tok, tmp_path):
    """G samples of a prompt cost one prefill of that prompt (prefilled tokens = the prompts' lengths, not G
    times them), calls are seeded, and the engine's per-token log-probs equal a training forward's within 1e-5
    (fp32), so they serve as pi_old."""
    from qwen25.inference.sampling import SamplingParams

    model = from_pretrained(tiny_hf_model(tmp_path / "m"), dtype=torch.float32)
    rollouts = EngineRollouts(model, max_rows=8)
    params = SamplingParams(max_new_tokens=6, do_sample=True)
    prompts = [[1, 2, 3], [4, 5]]
    out = rollouts(prompts, 4, params, seed=7)
    stats = rollouts.engine.stats
    assert stats["prefill_tokens"] == 5 and stats["prefill_forwards"] == 1  # both prompts, once each, together
    assert len(out.completions) == 8 and all(len(c) == 6 for c in out.completions)
    assert len({tuple(c) for c in out.completions[:4]}) > 1  # a group's samples draw from their own streams
    assert out.completions == rollouts(prompts, 4, params, seed=7).completions  # seeded
    assert model.training  # restored
    batch = collate_samples([prompts[i // 4] for i in range(8)], out.completions, torch.zeros(8), tok.pad_id,
                            out.logprobs)
    with torch.no_grad():
        forward, _ = completion_logps(model, batch)
    torch.testing.assert_close(batch.old_logps * batch.mask, forward * batch.mask, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="more than the engine's 8 rows"):
        rollouts(prompts, 9, params, seed=0)


def test_recipe_refuses_fewer_engine_rows_than_a_group():
    recipe = GRPORecipe(queries=["q.jsonl"])
    recipe.model.preset = "qwen25-tiny"
    recipe.rollout.group_size, recipe.rollout.max_rows = 8, 4
    with pytest.raises(RecipeError, match="rollout.max_rows"):
        recipe.validate()


@pytest.mark.slow
def test_grpo_run_trains_evaluates_and_exports(tok, tmp_path):
    start = tiny_hf_model(tmp_path / "start")
    queries = [Query(f"q{i}", "math", [{"role": "user", "content": f"What is {i} + 1?"}],
                     {"kind": "math", "reference": str(i + 1)}, "test") for i in range(8)]
    write_queries(queries, tmp_path / "q.jsonl")
    recipe = tmp_path / "grpo.toml"
    recipe.write_text(f"""
name = "t"
run_dir = "{tmp_path / 'run'}"
lr = 1e-3
steps = 4
beta = 0.01
queries = ["{tmp_path / 'q.jsonl'}"]
heldout = ["{tmp_path / 'q.jsonl'}"]
[model]
path = "{start}"
[rollout]
group_size = 4
queries_per_step = 2
steps_per_rollout = 2
max_new_tokens = 6
[order]
samples = 2
refresh_every = 2
[train]
micro_batch = 4
dtype = "float32"
eval_every = 2
checkpoint_every = 2
""")
    out = run_cli("grpo", "run", "--recipe", str(recipe), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r.get("event") == "rollout"]) == 2  # 4 steps, 2 per rollout batch
    train = [r for r in records if "loss" in r and "eval_loss" not in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all("kl" in r for r in train)
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert len([r for r in records if "eval_pass_rate" in r]) == 3
    assert (tmp_path / "run" / "hf" / "config.json").is_file()
