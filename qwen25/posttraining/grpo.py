"""Online RL with GRPO (report §4.3): G responses per query, rewards from the verifiers and/or a reward model,
advantages normalised within each group, the clipped ratio objective with an optional k3 KL to the reference,
and queries processed in order of the variance of their reward scores.

    qwen25 grpo run --recipe recipes/grpo-tiny.toml [--set ...] [--resume | --fresh]

Batch semantics are the report's, as recipe fields: `rollout.queries_per_step` x `rollout.group_size` samples per
rollout batch (256 x 8 = 2048 in the report), split into `rollout.steps_per_rollout` optimizer steps (1: one
update per rollout batch, fully on-policy, and pi_old is the policy itself, as TRL does). Loss aggregation:
`token_mean` (every completion token of the step weighs the same), `sequence_mean` (each sequence's token mean,
then the mean over sequences: the GRPO paper) or `dr_grpo` (token sums / (sequences x max_new_tokens)). Each
rollout batch logs its reward, pass rate, the share of groups whose rewards are all equal (no signal) and the time
spent generating and scoring; `order.skip_zero_variance` leaves such groups out of the update.

Log-probs for the loss are the model's at temperature 1 whatever the sampling temperature (the ratio compares the
policy with its own earlier self, so it stays consistent). Rollouts go through the inference engine
(`rollouts.EngineRollouts`: G samples of a query share one prefill); in fp32 its per-token log-probs are pi_old
(no second forward), under autocast pi_old comes from a forward in the training precision. The policy is
generated from directly, so GRPO runs in one process (a torchrun launch is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwen25.data.queries import Query, read_queries
from qwen25.generation import generate
from qwen25.inference.sampling import SamplingParams
from qwen25.posttraining.query_order import VarianceOrder
from qwen25.posttraining.rewards import MixedReward, RewardFn, RewardModelScore, VerifierReward
from qwen25.posttraining.rollouts import EngineRollouts, RolloutResult, Rollouts
from qwen25.posttraining.sft import ModelSection
from qwen25.posttraining.stage import StageRecipe, prepare_run_dir
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.training import recipe as recipe_io
from qwen25.training.distributed import init_distributed, shutdown
from qwen25.training.losses import GRPO_AGGREGATIONS, grpo_advantages, grpo_aggregate, grpo_token_losses
from qwen25.training.recipe import RecipeError
from qwen25.training.startup import chat_generation_config, export_hf, load_for_training
from qwen25.training.trainer import LossOutput, Phase, TrainConfig, Trainer


@dataclass
class RolloutSection:
    group_size: int = 8  # G responses per query
    queries_per_step: int = 256  # queries per rollout batch (x group_size = samples)
    steps_per_rollout: int = 1  # optimizer steps each rollout batch is split into
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_rows: int = 256  # most sequences the engine decodes together (>= group_size)


@dataclass
class OrderSection:
    variance: bool = True  # highest reward variance first; False: shuffled passes
    samples: int = 4  # k samples per query to score its variance
    refresh_every: int = 10  # steps between re-scoring
    lookahead: int = 0  # queries of the pass scored at each refresh (0: all not yet trained on)
    skip_zero_variance: bool = False  # leave groups whose rewards are all equal out of the update


@dataclass
class RewardSection:
    verifier: float = 1.0  # weight of the rule reward (1 when the query's verifier passes the response)
    reward_model: float = 0.0  # weight of the reward model's score
    reward_model_path: str = ""  # a directory `qwen25 rm train` wrote


@dataclass
class GRPORecipe(StageRecipe):
    name: str = "grpo"
    lr: float = 1e-6
    min_lr: float = 1e-6
    schedule: str = "constant"
    steps: int = 100  # optimizer steps
    beta: float = 0.0  # weight of the k3 KL to the reference (0: none)
    kl_metrics: bool = True  # log the KL to the reference even when beta is 0 (one extra no-grad forward)
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token_mean"
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO's mean-only advantages)
    queries: list[str] = field(default_factory=list)  # query JSONL files (`qwen25 data queries` format)
    heldout: list[str] = field(default_factory=list)  # held-out queries: greedy pass rate at every evaluation
    model: ModelSection = field(default_factory=ModelSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    order: OrderSection = field(default_factory=OrderSection)
    rewards: RewardSection = field(default_factory=RewardSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch=8, weight_decay=0.0, eval_every=10,
                                                                   checkpoint_every=50))

    def validate(self) -> None:
        self.check_common(self.train, self.model)

        def fail(where: str, why: str) -> None:
            raise RecipeError(f"{self.source}: {where} {why}")

        if not self.queries:
            fail("queries", "must list at least one query JSONL file")
        if self.steps < 1:
            fail("steps", f"must be >= 1, got {self.steps}")
        if self.aggregation not in GRPO_AGGREGATIONS:
            fail("aggregation", f"must be one of {', '.join(GRPO_AGGREGATIONS)}, got {self.aggregation!r}")
        for key in ("beta", "clip_low", "clip_high"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        r = self.rollout
        for key in ("group_size", "queries_per_step", "steps_per_rollout", "max_new_tokens", "max_rows"):
            if getattr(r, key) < 1:
                fail(f"rollout.{key}", f"must be >= 1, got {getattr(r, key)}")
        if r.group_size < 2:
            fail("rollout.group_size", "must be >= 2: advantages compare the responses of a group")
        if r.max_rows < max(r.group_size, self.order.samples if self.order.variance else 0):
            fail("rollout.max_rows", f"must be at least rollout.group_size and order.samples (a group is decoded "
                 f"together), got {r.max_rows}")
        if r.steps_per_rollout > r.queries_per_step * r.group_size:
            fail("rollout.steps_per_rollout", "is more than the samples of a rollout batch")
        if not r.temperature > 0 or not 0 < r.top_p <= 1 or r.top_k < 0:
            fail("rollout", f"needs temperature > 0, top_p in (0, 1], top_k >= 0; got {r.temperature}, {r.top_p}, "
                 f"{r.top_k}")
        if self.order.samples < 2 or self.order.refresh_every < 1 or self.order.lookahead < 0:
            fail("order", "needs samples >= 2 (a variance), refresh_every >= 1 and lookahead >= 0")
        if self.rewards.reward_model and not self.rewards.reward_model_path:
            fail("rewards.reward_model_path", "must name a reward model directory when rewards.reward_model != 0")
        if not (self.rewards.verifier or self.rewards.reward_model):
            fail("rewards", "give the verifier or the reward model a non-zero weight")


def load_grpo_recipe(path: str | Path, overrides: list[str] | None = None) -> GRPORecipe:
    return recipe_io.load_recipe(path, GRPORecipe, overrides)


# samples and the loss ----------------------------------------------------------------------------------------


@dataclass
class SampleBatch:
    """A micro-batch of (prompt, completion) samples, right-padded; labels are the completion tokens (-100
    elsewhere), so log-probs line up with `old_logps` / `ref_logps` [B, T] (0 off the completion)."""

    input_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B]
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != -100


def collate_samples(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], advantages: torch.Tensor,
                    pad_id: int, logprobs: Sequence[Sequence[float]] | None = None) -> SampleBatch:
    """Right-padded rows of prompt + completion; `logprobs` (one per completion token, e.g. the sampler's) become
    `old_logps`, laid out like the labels."""
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), -100, dtype=torch.long)
    old = torch.zeros((len(prompts), length)) if logprobs is not None else None
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids[r, :len(p) + len(c)] = torch.tensor(list(p) + list(c))
        labels[r, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(list(c))
        if old is not None:
            if len(logprobs[r]) != len(c):
                raise ValueError(f"row {r}: {len(logprobs[r])} log-probs for {len(c)} completion tokens")
            old[r, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(list(logprobs[r]), dtype=torch.float32)
    return SampleBatch(ids, labels, advantages.float(), old_logps=old)


def completion_logps(model: torch.nn.Module, batch: SampleBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [B, T] of the completion tokens, and the MoE aux loss term (or None)."""
    device = next(model.parameters()).device
    out = model(batch.input_ids.to(device), labels=batch.labels.to(device), return_logprobs=True)
    return out.logprobs, (out.router.weighted_aux_loss if out.router is not None else None)


def make_grpo_loss(aggregation: str, clip_low: float, clip_high: float, beta: float, max_completion_length: int):
    """loss_fn(model, batch) for the trainer: the aggregated GRPO loss as (sum, units), with KL and clipping sums."""

    def loss_fn(model: torch.nn.Module, batch: SampleBatch) -> LossOutput:
        logps, extra = completion_logps(model, batch)
        device = logps.device
        mask = batch.mask.to(device)
        old = batch.old_logps.to(device) if batch.old_logps is not None else logps.detach()
        ref = batch.ref_logps.to(device) if batch.ref_logps is not None else None
        token_losses, _, clipped = grpo_token_losses(logps, old, batch.advantages.to(device), clip_low, clip_high,
                                                     beta, ref)
        total, units = grpo_aggregate(token_losses, mask, aggregation, max_completion_length)
        logs = {"sequences": mask.shape[0], "tokens": mask.sum(), "clipped": (clipped & mask).sum()}
        if ref is not None:
            diff = (ref - logps.detach()) * mask
            logs["kl"] = ((torch.exp(diff) - diff - 1) * mask).sum()
        return LossOutput(total, int(units), logs, extra)

    return loss_fn


def units_counter(aggregation: str):
    if aggregation == "token_mean":
        return lambda batch: int(batch.mask.sum())
    return lambda batch: batch.input_ids.shape[0]


def summarize_grpo_logs(logs: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
    tokens = max(float(logs["tokens"]), 1.0)
    out = {"clip_ratio": float(logs["clipped"]) / tokens, "completion_tokens": float(logs["tokens"])}
    if "kl" in logs:
        out["kl"] = float(logs["kl"]) / tokens
    return out


# the rollout source ------------------------------------------------------------------------------------------


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


def stop_ids(tok: QwenTokenizer) -> list[int]:
    return [tok.control_ids["<|im_end|>"], tok.endoftext_id]


class GRPOSource:
    """The trainer's step source for GRPO: when its buffer is empty it samples a rollout batch with the current
    policy (queries from the variance order), scores it, computes advantages (and pi_old / reference log-probs
    when needed) and cuts it into `steps_per_rollout` steps of micro-batches.

    policy / reference: models for pi_old (needed when steps_per_rollout > 1) and for the KL (beta > 0 or
    kl_metrics); None where not needed. sampler_logps: take pi_old from the rollouts' log-probs when they come
    with them (exact when the rollout and the loss run in one precision) instead of a forward of `policy`.
    report(stats): called with each rollout batch's numbers."""

    def __init__(self, recipe: GRPORecipe, queries: Sequence[Query], tok: QwenTokenizer, rollouts: Rollouts,
                 reward: RewardFn, policy: torch.nn.Module | None = None, reference: torch.nn.Module | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 sampler_logps: bool = True) -> None:
        self.recipe, self.tok, self.rollouts, self.reward = recipe, tok, rollouts, reward
        self.policy, self.reference, self.autocast = policy, reference, autocast
        self.sampler_logps = sampler_logps
        self.by_id = {q.id: q for q in queries}
        self.prompts = {q.id: tok.encode_chat(q.messages, add_generation_prompt=True)[0] for q in queries}
        r = recipe.rollout
        self.params = SamplingParams(max_new_tokens=r.max_new_tokens, do_sample=True, temperature=r.temperature,
                                     top_p=r.top_p, top_k=r.top_k, stop_token_ids=stop_ids(tok))
        self.stop = set(self.params.stop_token_ids)
        scorer = self.score_variance if recipe.order.variance else None
        self.order = VarianceOrder(list(self.by_id), scorer, recipe.order.refresh_every, recipe.seed,
                                   recipe.order.lookahead)
        self.buffer: list[list[SampleBatch]] = []
        self.step = 0  # optimizer steps taken from this source
        self.rollout_batches = 0
        self.totals = {"groups": 0, "zero_variance_groups": 0}
        self.report: Callable[[dict], None] = lambda stats: None

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([t for t in ids if t not in self.stop])

    def sample(self, ids: Sequence[str], group_size: int, seed: int) -> tuple[list[Query], RolloutResult,
                                                                              torch.Tensor, dict]:
        """G completions for each query (with the sampler's log-probs when it gives them) and their rewards
        [len(ids), G], with timings."""
        t0 = time.perf_counter()
        result = self.rollouts([self.prompts[i] for i in ids], group_size, self.params, seed)
        t1 = time.perf_counter()
        queries = [self.by_id[i] for i in ids for _ in range(group_size)]
        rewards = self.reward(queries, [self.decode(c) for c in result.completions])
        t2 = time.perf_counter()
        tokens = sum(len(c) for c in result.completions)
        return queries, result, torch.tensor(rewards, dtype=torch.float64).view(len(ids), group_size), \
            {"rollout_s": t1 - t0, "scoring_s": t2 - t1, "rollout_tokens": tokens}

    def score_variance(self, ids: list[str]) -> dict[str, float]:
        """The variance of k sampled rewards of each query (the order's scorer)."""
        _, _, rewards, _ = self.sample(ids, self.recipe.order.samples, _seed(self.recipe.seed, "score",
                                                                             self.order.refreshes))
        return dict(zip(ids, rewards.var(dim=1).tolist()))

    def next_step(self) -> list[SampleBatch]:
        if not self.buffer:
            self._rollout_batch()
        self.step += 1
        return self.buffer.pop(0)

    def _rollout_batch(self) -> None:
        r, G = self.recipe.rollout, self.recipe.rollout.group_size
        t0 = time.perf_counter()
        spent = {"rollout_s": 0.0, "scoring_s": 0.0, "rollout_tokens": 0, "order_refresh_s": 0.0}
        groups = zero_groups = samples = 0
        reward_sum = passed = 0.0
        attempts = max(1, -(-len(self.by_id) // r.queries_per_step))  # skipping may need up to one pass
        for _ in range(attempts):
            t = time.perf_counter()
            ids = self.order.take(r.queries_per_step, self.step)  # may re-score the pass (the variance order)
            spent["order_refresh_s"] += time.perf_counter() - t
            queries, result, rewards, timing = self.sample(ids, G, _seed(self.recipe.seed, "rollout",
                                                                         self.rollout_batches))
            self.rollout_batches += 1
            for key in ("rollout_s", "scoring_s", "rollout_tokens"):
                spent[key] += timing[key]
            zero = (rewards == rewards[:, :1]).all(dim=1)
            groups, zero_groups, samples = groups + len(ids), zero_groups + int(zero.sum()), samples + rewards.numel()
            reward_sum, passed = reward_sum + float(rewards.sum()), passed + float((rewards > 0).sum())
            keep = ~zero if self.recipe.order.skip_zero_variance else torch.ones_like(zero)
            if keep.any():
                break
        else:
            raise ValueError(f"every group of {attempts} rollout batches had equal rewards (no signal); the rewards "
                             "cannot teach this policy on these queries (or set order.skip_zero_variance = false)")
        self.totals["groups"] += groups
        self.totals["zero_variance_groups"] += zero_groups
        advantages = grpo_advantages(rewards.view(-1).float(), G, self.recipe.scale_rewards)
        rows = [i for i in range(len(result.completions)) if keep[i // G]]
        prompts = [self.prompts[queries[i].id] for i in rows]
        logprobs = [result.logprobs[i] for i in rows] if result.logprobs is not None else None
        batches = self._micro_batches(prompts, [result.completions[i] for i in rows], advantages[rows], logprobs)
        per_step = -(-len(batches) // r.steps_per_rollout)
        self.buffer = [batches[i:i + per_step] for i in range(0, len(batches), per_step)]
        self.report({"event": "rollout", "reward_mean": reward_sum / samples, "pass_rate": passed / samples,
                     "groups": groups, "zero_variance_share": zero_groups / groups, "trained_groups": int(keep.sum()),
                     "completion_tokens_mean": spent["rollout_tokens"] / samples,
                     "rollout_tokens_per_s": spent["rollout_tokens"] / max(spent["rollout_s"], 1e-9), **spent,
                     "prepare_s": time.perf_counter() - t0 - spent["rollout_s"] - spent["scoring_s"]
                     - spent["order_refresh_s"]})

    def _micro_batches(self, prompts, completions, advantages, logprobs=None) -> list[SampleBatch]:
        """Micro-batches with pi_old (when a rollout batch makes several steps) and reference log-probs."""
        micro, pad = self.recipe.train.micro_batch, self.tok.pad_id
        needs_old = self.recipe.rollout.steps_per_rollout > 1
        use_sampler = needs_old and self.sampler_logps and logprobs is not None
        out = []
        for start in range(0, len(prompts), micro):
            b = collate_samples(prompts[start:start + micro], completions[start:start + micro],
                                advantages[start:start + micro], pad,
                                logprobs[start:start + micro] if use_sampler else None)
            with torch.no_grad(), self.autocast():
                if needs_old and not use_sampler and self.policy is not None:
                    b.old_logps = completion_logps(self.policy, b)[0].cpu()
                if self.reference is not None:
                    b.ref_logps = completion_logps(self.reference, b)[0].cpu()
            out.append(b)
        return out

    def state_dict(self) -> dict:
        return {"order": self.order.state_dict(), "buffer": self.buffer, "step": self.step,
                "rollout_batches": self.rollout_batches, "totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])
        self.buffer, self.step = state["buffer"], state["step"]
        self.rollout_batches, self.totals = state["rollout_batches"], dict(state["totals"])


# evaluation and the run --------------------------------------------------------------------------------------


@torch.inference_mode()
def greedy_pass_rate(model: torch.nn.Module, queries: Sequence[Query], tok: QwenTokenizer, reward: RewardFn,
                     max_new_tokens: int, batch: int = 64) -> float:
    """Share of queries whose greedy response the reward scores above 0 (for verifier rewards: passes)."""
    was_training = model.training
    model.eval()
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=stop_ids(tok))
    stop = set(params.stop_token_ids)
    passed = 0
    for start in range(0, len(queries), batch):
        chunk = queries[start:start + batch]
        outs = generate(model, [tok.encode_chat(q.messages, add_generation_prompt=True)[0] for q in chunk], params,
                        max_batch=batch)
        passed += sum(r > 0 for r in reward(chunk, [tok.decode([t for t in o if t not in stop]) for o in outs]))
    model.train(was_training)
    return passed / max(len(queries), 1)


def load_query_files(paths: Sequence[str]) -> list[Query]:
    queries, seen = [], {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: query file not found")
        for q in read_queries(path):
            if q.id in seen:
                raise ValueError(f"{path}: query id {q.id!r} also appears in {seen[q.id]}")
            seen[q.id] = path
            queries.append(q)
    return queries


def run_grpo(recipe: GRPORecipe, resume: bool = False, fresh: bool = False, log=print) -> Path | None:
    """Train `recipe.steps` steps; returns the exported HF directory."""
    info = init_distributed(recipe.train.device)
    try:
        if info.enabled:
            raise ValueError("GRPO runs in one process: rollouts generate with the whole policy (launch it without "
                             "torchrun)")
        return _run(recipe, info, resume, fresh, log)
    finally:
        shutdown()


def _run(recipe: GRPORecipe, info, resume: bool, fresh: bool, log) -> Path:
    out = recipe.directory
    prepare_run_dir(out, resume, fresh, info.main, ("hf",))
    tok = load_tokenizer(recipe.model.tokenizer or recipe.model.path or "qwen2.5")
    queries = load_query_files(recipe.queries)
    heldout = load_query_files(recipe.heldout) if recipe.heldout else []
    log(f"grpo: {len(queries)} queries, {len(heldout)} held out; {recipe.rollout.queries_per_step} x "
        f"{recipe.rollout.group_size} samples per rollout batch, {recipe.rollout.steps_per_rollout} step(s) each")
    model = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed)
    reference = None
    if recipe.beta > 0 or recipe.kl_metrics:
        reference = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed).eval()
        reference.requires_grad_(False)
    verifier = VerifierReward()
    sources = [(recipe.rewards.verifier, verifier)]
    if recipe.rewards.reward_model:
        sources.append((recipe.rewards.reward_model, RewardModelScore(recipe.rewards.reward_model_path, tok,
                                                                      info.device)))
    reward = MixedReward(sources)
    dtype = recipe.train.autocast_dtype
    autocast = contextlib.nullcontext if dtype is None else (lambda: torch.autocast(info.device.type, dtype=dtype))
    source = GRPOSource(recipe, queries, tok, EngineRollouts(model, recipe.rollout.max_rows), reward,
                        policy=model, reference=reference, autocast=autocast, sampler_logps=dtype is None)
    trainer = Trainer(model, recipe.train, info, out,
                      make_grpo_loss(recipe.aggregation, recipe.clip_low, recipe.clip_high, recipe.beta,
                                     recipe.rollout.max_new_tokens),
                      units_counter(recipe.aggregation), lr=recipe.lr, log=log, summarize_logs=summarize_grpo_logs)
    source.report = lambda stats: trainer.write({"step": trainer.state["step"] + 1, **stats})
    trainer.resume() if resume else trainer.start_fresh()
    evaluate = (lambda: {"eval_pass_rate": greedy_pass_rate(trainer.inner, heldout, tok, verifier,
                                                            recipe.rollout.max_new_tokens)}) if heldout else None
    phase = Phase("grpo", recipe.steps, recipe.build_schedule(recipe.steps), source,
                  info={"aggregation": recipe.aggregation})
    trainer.fit(0, phase, evaluate=evaluate, checkpoint_extra=lambda: {"recipe": recipe_io.to_dict(recipe)})
    final = export_hf(trainer.model, trainer.inner.config, tok, out / "hf", info, chat_generation_config(tok))
    totals = source.totals
    log(f"grpo: {trainer.state['step']} steps, {totals['zero_variance_groups']}/{totals['groups']} groups with equal "
        f"rewards; model exported to {final}")
    return final
