"""Supervised fine-tuning (report §4.1): chat conversations, loss on assistant tokens only, packed rows,
phases with their own data mixtures, and the long-context phase of §4.4.

The recipe defaults are the report's: learning rate decaying from 7e-6 to 7e-7 over the whole run, weight decay
0.1, gradient clipping at 1.0, two epochs per phase. A run is a list of phases (e.g. general, then a second
mixture; or short conversations only, then short and long mixed at a longer row length), each trained on the
one trainer, with held-out assistant-token loss during training and an HF export at the end of every phase.

    qwen25 sft run --recipe recipes/sft-tiny.toml [--set ...] [--resume]
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from qwen25.io import atomic_write_text
from qwen25.posttraining.conversations import EncodeStats, Example, load_examples
from qwen25.posttraining.packing import PackedConversations, heldout_batches
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from qwen25.training import recipe as recipe_io
from qwen25.training.distributed import DistInfo, run_stage
from qwen25.training.losses import causal_lm_loss, count_target_tokens, summarize_moe_logs
from qwen25.training.optim import Schedule
from qwen25.training.recipe import RecipeError
from qwen25.training.startup import chat_generation_config, export_hf, load_for_training
from qwen25.training.trainer import Phase, TrainConfig, Trainer


@dataclass
class ModelSection:
    path: str = ""  # an HF model directory (our pretraining export, or a released Qwen2.5 checkpoint)
    preset: str = ""  # or a preset, randomly initialised (tests, smoke runs)
    tokenizer: str = ""  # default: the model directory's; 'qwen2.5' for the official one


@dataclass
class PhaseSection:
    name: str = "sft"
    data: list[str] = field(default_factory=list)  # JSONL conversation files
    heldout: list[str] = field(default_factory=list)  # JSONL files for the held-out assistant loss
    epochs: int = 2
    seq_len: int = 2048  # row length for packing; the longest conversation this phase trains on
    batch: int = 16  # rows per optimizer step, over all processes
    overlong: str = "drop"  # a conversation longer than seq_len: "drop" or "truncate"
    rope_theta: float = 0.0  # > 0: this phase's RoPE base (a long-context phase may raise it); 0: the model's


@dataclass
class SFTRecipe(recipe_io.StageRecipe):
    name: str = "sft"
    seed: int = 1234
    run_dir: str = ""  # default runs/<name>
    lr: float = 7e-6  # start of the decay (report §4.1)
    min_lr: float = 7e-7  # end of the decay, reached at the last step of the last phase
    schedule: str = "cosine"  # cosine or wsd (linear decay at the end) or constant
    warmup_steps: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch=4, weight_decay=0.1, grad_clip=1.0,
                                                                   eval_every=50, checkpoint_every=100))
    phases: list[PhaseSection] = field(default_factory=lambda: [PhaseSection()])
    source: str = "<defaults>"

    def validate(self) -> None:
        src = self.source

        def fail(where: str, why: str) -> None:
            raise RecipeError(f"{src}: {where} {why}")

        try:
            self.train.validate("train")
        except ValueError as e:
            raise RecipeError(f"{src}: {e}") from None
        if not (0 < self.lr and 0 <= self.min_lr <= self.lr):
            fail("lr/min_lr", f"need 0 < lr and 0 <= min_lr <= lr, got lr {self.lr}, min_lr {self.min_lr}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            fail("schedule", f"must be cosine, wsd or constant, got {self.schedule!r}")
        if self.warmup_steps < 0:
            fail("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if bool(self.model.path) == bool(self.model.preset):
            fail("model", "needs exactly one of 'path' (an HF directory) or 'preset'")
        if not self.phases:
            fail("phases", "must list at least one [[phases]] table")
        for i, p in enumerate(self.phases):
            where = f"phases[{i}]"
            if not p.data:
                fail(f"{where}.data", "must list at least one JSONL file")
            for key in ("epochs", "batch"):
                if getattr(p, key) < 1:
                    fail(f"{where}.{key}", f"must be >= 1, got {getattr(p, key)}")
            if p.seq_len < 8:
                fail(f"{where}.seq_len", f"must be >= 8, got {p.seq_len}")
            if p.overlong not in ("drop", "truncate"):
                fail(f"{where}.overlong", f"must be 'drop' or 'truncate', got {p.overlong!r}")
            if p.rope_theta < 0:
                fail(f"{where}.rope_theta", f"must be > 0 (or 0 for the model's own), got {p.rope_theta}")
            if p.batch % self.train.micro_batch and self.train.micro_batch < p.batch:
                fail(f"{where}.batch", f"({p.batch}) must be a multiple of train.micro_batch ({self.train.micro_batch})")


def load_sft_recipe(path: str | Path, overrides: list[str] | None = None) -> SFTRecipe:
    return recipe_io.load_recipe(path, SFTRecipe, overrides)


@dataclass
class PhaseData:
    train: list[Example]
    heldout: list[Example]
    stats: EncodeStats


def load_phase_data(phase: PhaseSection, tok: QwenTokenizer, log) -> PhaseData:
    stats = EncodeStats()
    train = load_examples(phase.data, tok, phase.seq_len, phase.overlong, stats)
    held_stats = EncodeStats()
    heldout = load_examples(phase.heldout, tok, phase.seq_len, phase.overlong, held_stats) if phase.heldout else []
    log(f"sft data [{phase.name}]: {stats.summary()}" + (f"; held out: {held_stats.summary()}" if phase.heldout else ""))
    if not train:
        raise ValueError(f"phase {phase.name!r}: no conversation left to train on ({stats.summary()})")
    return PhaseData(train, heldout, stats)


def data_fingerprint(data: list[PhaseData], phases: list[PhaseSection]) -> str:
    """sha256 over every phase's encoded conversations and packing settings: a resumed run must see the same rows."""
    h = hashlib.sha256()
    for d, p in zip(data, phases):
        h.update(f"{p.seq_len}:{p.batch}:{p.epochs}:{len(d.train)}".encode())
        for e in d.train:
            h.update(e.ids.tobytes())
            h.update(e.target.tobytes())
    return h.hexdigest()


class Offset:
    """A schedule over the whole run, read from one phase: step k of the phase is step offset + k of the run."""

    def __init__(self, schedule: Schedule, offset: int) -> None:
        self.schedule, self.offset = schedule, offset

    def __call__(self, step: int) -> float:
        return self.schedule(self.offset + step)


def run_sft(recipe: SFTRecipe, resume: bool = False, fresh: bool = False, log=print) -> Path | None:
    """Train every phase; returns the final HF directory (rank 0)."""
    return run_stage(_run, recipe, resume, fresh, log)


def _run(recipe: SFTRecipe, info: DistInfo, resume: bool, fresh: bool, log) -> Path | None:
    out = recipe.directory
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            for old in ("checkpoints", "hf", "metrics.jsonl", "data_stats.json"):
                path = out / old
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            raise ValueError(f"{out} already has checkpoints: pass --resume to continue that run, --fresh to start "
                             "over, or choose another name")
    tok = load_tokenizer(recipe.model.tokenizer or recipe.model.path or "qwen2.5")
    data = [load_phase_data(p, tok, log) for p in recipe.phases]  # every file checked before any training
    model = load_for_training(recipe.model.path, recipe.model.preset, info.device, recipe.seed)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size} "
                         "embedding rows: they do not belong together")
    base_theta = model.config.rope_theta
    trainer = Trainer(model, recipe.train, info, out, causal_lm_loss, count_target_tokens, lr=recipe.lr, log=log,
                      summarize_logs=summarize_moe_logs if model.config.is_moe else None)
    sources = [PackedConversations(d.train, p.seq_len, p.batch, p.epochs, recipe.seed + i, tok.pad_id, info,
                                   recipe.train.micro_batch) for i, (p, d) in enumerate(zip(recipe.phases, data))]
    total = sum(s.total_steps for s in sources)
    schedule = Schedule(recipe.schedule, recipe.lr, total, recipe.warmup_steps, recipe.min_lr / recipe.lr)
    fingerprint = data_fingerprint(data, recipe.phases)
    if resume:
        state = trainer.resume()
        if state is not None and state.get("data_fingerprint", fingerprint) != fingerprint:
            raise ValueError(f"{out}: the SFT data or phase settings changed since the checkpoint was written; "
                             "resuming would train on different rows (use --fresh to start over)")
    else:
        trainer.start_fresh()
    if info.main:
        atomic_write_text(out / "data_stats.json", json.dumps(
            {p.name: vars(d.stats) | {"dropped": dict(d.stats.dropped)} for p, d in zip(recipe.phases, data)}, indent=2))
    offset = 0
    gen = chat_generation_config(tok)
    for i, (p, d, source) in enumerate(zip(recipe.phases, data, sources)):
        steps = source.total_steps
        if i >= trainer.state["phase"]:
            trainer.inner.set_rope(p.rope_theta or base_theta, trainer.inner.config.rope_scaling)
            held = heldout_batches(d.heldout, p.seq_len, recipe.train.micro_batch, tok.pad_id, info) if d.heldout else []
            evaluate = (lambda held=held: {"eval_loss": trainer.evaluate(held)["loss"]}) if held else None
            phase = Phase(p.name, steps, Offset(schedule, offset), source,
                          info={"seq_len": p.seq_len, "rope_theta": p.rope_theta or base_theta})
            finished = trainer.fit(i, phase, evaluate=evaluate,
                                   checkpoint_extra=lambda: {"recipe": recipe.to_dict(),
                                                             "model_config": trainer.inner.config.to_hf_dict(),
                                                             "data_fingerprint": fingerprint})
            export_hf(trainer.model, trainer.inner.config, tok, out / "hf" / p.name, info, gen)
            if not finished:
                break
        offset += steps
    final = out / "hf" / recipe.phases[-1].name
    if info.main:
        log(f"sft: {trainer.state['step']} steps; model exported to {final}")
    return final if info.main else None
