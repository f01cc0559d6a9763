"""Reward model (report §4.3): the decoder with a scalar head read at each sequence's last token, trained on
preference pairs with the Bradley-Terry loss, evaluated by pairwise accuracy per category, and saved as a
transformers `Qwen2ForSequenceClassification` directory (num_labels 1) that transformers loads unchanged.

    qwen25 rm train --recipe recipes/rm-tiny.toml [--set ...] [--resume | --fresh]

The model starts from a causal LM directory (the SFT model, as the report's reward models start from an instruct
checkpoint): its decoder, and a new `score` head initialised as transformers initialises it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qwen25.io import atomic_write_text
from qwen25.model import ModelConfig, Qwen2ForCausalLM, save_pretrained
from qwen25.model.checkpoint import load_state_dict
from qwen25.model.qwen2 import Qwen2Model
from qwen25.posttraining.pairs import (
    Pair,
    PairBatch,
    PairData,
    PairSource,
    PairStats,
    collate_pairs,
    load_pairs,
    pair_batches,
)
from qwen25.posttraining.sft import ModelSection
from qwen25.posttraining.stage import StageRecipe, per_unit_means, prepare_run_dir
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.training import recipe as recipe_io
from qwen25.training.distributed import DistInfo, run_stage
from qwen25.training.losses import bradley_terry_loss
from qwen25.training.startup import full_state_dict, load_for_training
from qwen25.training.trainer import LossOutput, Phase, TrainConfig, Trainer


class RewardModel(nn.Module):
    """transformers' Qwen2ForSequenceClassification with one label: `model` (the decoder) and `score` (hidden -> 1,
    no bias), the score read at the last token of each row."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.is_moe:
            raise ValueError("reward models are built on dense Qwen2 decoders here; this config has experts")
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.score = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, input_ids: torch.Tensor, last: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [B] (fp32). `last`: each row's last real token; default, as transformers: the last token that is
        not `config.pad_token_id` (rows are right-padded)."""
        h, _ = self.model(input_ids, attention_mask)
        if last is None:
            last = last_token(input_ids, self.config.pad_token_id)
        picked = h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]
        return self.score(picked).squeeze(-1).float()


def last_token(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """The rightmost position that is not padding (transformers' rule); without a pad id, the last position."""
    if pad_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * (input_ids != pad_id)).argmax(-1)


def from_causal_lm(lm: Qwen2ForCausalLM, pad_id: int, seed: int = 0) -> RewardModel:
    """A reward model sharing `lm`'s decoder (moved, not copied), with a fresh score head."""
    cfg = lm.config.replace(pad_token_id=pad_id)
    with torch.device("meta"):
        rm = RewardModel(cfg)
    rm.model = lm.model
    weight = next(lm.parameters())
    gen = torch.Generator().manual_seed(seed)
    rm.score = nn.Linear(cfg.hidden_size, 1, bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        rm.score.weight.copy_(torch.empty(1, cfg.hidden_size).normal_(0.0, cfg.initializer_range, generator=gen))
    return rm.train(lm.training)


def reward_config(cfg: ModelConfig) -> dict:
    """config.json of the saved reward model: the causal LM's fields with transformers' classification keys."""
    hf = cfg.to_hf_dict()
    hf.update(architectures=["Qwen2ForSequenceClassification"], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
              problem_type="regression", pad_token_id=cfg.pad_token_id)
    return hf


def save_reward_model(rm: RewardModel, directory: str | Path, tok: QwenTokenizer | None = None) -> Path:
    directory = Path(directory)
    save_pretrained(rm, directory)  # weights (model.*, score.weight), generation_config.json, then config.json
    atomic_write_text(directory / "config.json", json.dumps(reward_config(rm.config), indent=2) + "\n")
    if tok is not None:
        tok.save(directory)
    return directory


def load_reward_model(directory: str | Path, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> RewardModel:
    directory = Path(directory)
    cfg = ModelConfig.from_file(directory)
    with torch.device("meta"):
        rm = RewardModel(cfg)
    rm.generation_config = {}
    rm.load_state_dict(load_state_dict(directory, rm, dtype), assign=True)
    return rm.to(device).eval()


# training ------------------------------------------------------------------------------------------------------


def count_pairs(batch: PairBatch) -> int:
    return batch.pairs


def rm_loss(model: nn.Module, batch: PairBatch) -> LossOutput:
    """Bradley-Terry loss summed over the micro-batch's pairs; logs accuracy and margin sums."""
    device = next(model.parameters()).device
    scores = model(batch.input_ids.to(device), last=batch.last.to(device))
    chosen, rejected = scores.chunk(2)
    n = batch.pairs
    loss = bradley_terry_loss(chosen, rejected) * n
    return LossOutput(loss, n, {"pairs": n, "accuracy": (chosen > rejected).sum().detach(),
                                "margin": (chosen - rejected).sum().detach(),
                                "reward_chosen": chosen.sum().detach(), "reward_rejected": rejected.sum().detach()})


def summarize_rm_logs(logs: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
    return per_unit_means(logs, "pairs")


@torch.inference_mode()
def pairwise_accuracy(rm: nn.Module, pairs: Sequence[Pair], pad_id: int, batch: int = 32) -> dict[str, dict]:
    """{category: {"correct", "pairs", "accuracy"}} plus "all": how often the chosen response scores higher."""
    device = next(rm.parameters()).device
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for start in range(0, len(pairs), batch):
        b = collate_pairs(pairs, range(start, min(start + batch, len(pairs))), pad_id)
        chosen, rejected = rm(b.input_ids.to(device), last=b.last.to(device)).chunk(2)
        for cat, win in zip(b.categories, (chosen > rejected).tolist()):
            for key in (cat, "all"):
                counts[key][0] += int(win)
                counts[key][1] += 1
    return {k: {"correct": c, "pairs": n, "accuracy": c / n} for k, (c, n) in sorted(counts.items())}


@dataclass
class RMRecipe(StageRecipe):
    name: str = "rm"
    lr: float = 1e-5
    min_lr: float = 1e-6
    model: ModelSection = field(default_factory=ModelSection)  # the causal LM whose decoder the reward model starts from
    data: PairData = field(default_factory=PairData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch=8, weight_decay=0.0, eval_every=50,
                                                                   checkpoint_every=200))

    def validate(self) -> None:
        self.check_common(self.train, self.model)
        self.data.check(self.source)


def load_rm_recipe(path: str | Path, overrides: list[str] | None = None) -> RMRecipe:
    return recipe_io.load_recipe(path, RMRecipe, overrides)


def run_rm(recipe: RMRecipe, resume: bool = False, fresh: bool = False, log=print) -> Path | None:
    """Train, export `<run>/hf`, and write `<run>/rm_eval.json` (held-out pairwise accuracy per category)."""
    return run_stage(_run, recipe, resume, fresh, log)


def _run(recipe: RMRecipe, info: DistInfo, resume: bool, fresh: bool, log) -> Path | None:
    out = recipe.directory
    prepare_run_dir(out, resume, fresh, info.main, ("hf", "rm_eval.json"))
    tok = load_tokenizer(recipe.model.tokenizer or recipe.model.path or "qwen2.5")
    stats, held_stats = PairStats(), PairStats()
    train = load_pairs(recipe.data.train, tok, recipe.data.max_len, stats)
    heldout = load_pairs(recipe.data.heldout, tok, recipe.data.max_len, held_stats) if recipe.data.heldout else []
    log(f"rm data: {stats.summary()}" + (f"; held out: {held_stats.summary()}" if heldout else ""))
    lm = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed)
    rm = from_causal_lm(lm, tok.pad_id, recipe.seed)
    source = PairSource(train, recipe.data.pairs_per_step, recipe.data.epochs, recipe.seed, tok.pad_id, info,
                        recipe.train.micro_batch)
    trainer = Trainer(rm, recipe.train, info, out, rm_loss, count_pairs, lr=recipe.lr, log=log,
                      summarize_logs=summarize_rm_logs)
    trainer.resume() if resume else trainer.start_fresh()
    held = pair_batches(heldout, recipe.train.micro_batch, tok.pad_id, info)
    evaluate = (lambda: {f"eval_{k}": v for k, v in trainer.evaluate(held).items() if k != "pairs"}) if held else None
    phase = Phase("rm", source.total_steps, recipe.build_schedule(source.total_steps), source)
    trainer.fit(0, phase, evaluate=evaluate, checkpoint_extra=lambda: {"recipe": recipe_io.to_dict(recipe)})
    state = full_state_dict(trainer.model)
    if not info.main:
        return None
    with torch.device("meta"):
        plain = RewardModel(rm.config)
    plain.load_state_dict(state, assign=True)
    plain.generation_config = {}
    final = save_reward_model(plain, out / "hf", tok)
    result = pairwise_accuracy(load_reward_model(final), heldout or train, tok.pad_id)
    atomic_write_text(out / "rm_eval.json", json.dumps({"split": "heldout" if heldout else "train", **result},
                                                       indent=2) + "\n")
    log(f"rm: {trainer.state['step']} steps; pairwise accuracy "
        + ", ".join(f"{k} {100 * v['accuracy']:.1f}% ({v['pairs']})" for k, v in result.items())
        + f"; model in {final}")
    return final
