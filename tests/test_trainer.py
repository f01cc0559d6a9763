"""The one trainer, on its own (no pipeline): exact token-mean gradient accumulation, the unit-count check, the
non-finite guard, and checkpoints that are verified and fall back to the newest intact one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from qwen25.model import ModelConfig, build_model
from qwen25.training.checkpoint import MANIFEST, TRAINER_STATE, checkpoints
from qwen25.training.distributed import DistInfo
from qwen25.training.losses import causal_lm_loss, count_target_tokens
from qwen25.training.optim import Schedule
from qwen25.training.trainer import LossOutput, NonFiniteError, Phase, TrainConfig, Trainer

CFG = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, dtype="float32")


@dataclass
class Rows:
    input_ids: torch.Tensor
    labels: torch.Tensor


def rows(seed: int, n: int = 8, length: int = 16, masked: float = 0.3) -> Rows:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG.vocab_size, (n, length + 1), generator=g)
    labels = ids[:, 1:].clone()
    labels[torch.rand(labels.shape, generator=g) < masked] = -100  # rows get different numbers of targets
    return Rows(ids[:, :-1], labels)


def split(batch: Rows, micro: int) -> list[Rows]:
    return [Rows(batch.input_ids[i:i + micro], batch.labels[i:i + micro]) for i in range(0, len(batch.input_ids), micro)]


class ListSource:
    """A deterministic, resumable step source: step i gets `rows(i)` split into micro-batches."""

    def __init__(self, micro: int, poison_step: int | None = None) -> None:
        self.micro, self.i, self.poison_step = micro, 0, poison_step

    def next_step(self):
        self.i += 1
        batch = rows(self.i)
        if self.i == self.poison_step:
            batch.input_ids = batch.input_ids.clone()
            batch.input_ids[0, 0] = -1  # marks the step whose loss the test loss function makes NaN
        return split(batch, self.micro)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def nan_aware_loss(model, batch):
    if bool((batch.input_ids < 0).any()):
        out = causal_lm_loss(model, Rows(batch.input_ids.clamp(min=0), batch.labels))
        return LossOutput(out.loss_sum * float("nan"), out.n_units)
    return causal_lm_loss(model, batch)


def make_trainer(tmp_path, micro=8, loss_fn=causal_lm_loss, **train) -> Trainer:
    config = TrainConfig(**{"micro_batch": micro, "dtype": "float32", "eval_every": 0, "checkpoint_every": 2,
                            "keep_last": 3, "grad_clip": 1.0, **train})
    return Trainer(build_model(CFG, seed=0), config, DistInfo(), tmp_path, loss_fn, count_target_tokens, lr=1e-2,
                   log=lambda *a: None)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    whole, accum = make_trainer(tmp_path / "a", micro=8), make_trainer(tmp_path / "b", micro=2)
    batch = rows(0)
    loss_whole, _ = whole.accumulate_gradients([batch])
    loss_accum, logs = accum.accumulate_gradients(split(batch, 2))  # 4 micro-batches, unequal target counts
    assert logs["units"] == count_target_tokens(batch)
    assert abs(loss_whole - loss_accum) < 1e-6
    # the exact mean over every target of the global batch, not a mean of per-micro-batch means
    model = build_model(CFG, seed=0)
    logits = model(batch.input_ids).logits
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100)
    assert abs(loss_whole - reference.item()) < 1e-5
    for a, b in zip(whole.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
        assert a.grad.abs().max() > 0


def test_loss_and_unit_count_must_agree(tmp_path):
    trainer = make_trainer(tmp_path, loss_fn=lambda m, b: LossOutput(causal_lm_loss(m, b).loss_sum, 1))
    with pytest.raises(RuntimeError, match="summed over 1 units but count_units gave"):
        trainer.accumulate_gradients([rows(0)])


def _fit(trainer: Trainer, steps: int = 6, poison_step=None):
    phase = Phase("p", steps, Schedule("constant", 1e-2, steps), ListSource(trainer.config.micro_batch, poison_step))
    return trainer.fit(0, phase)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.inner.state_dict().items()}


def test_nonfinite_loss_stops_before_updating_and_names_the_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, loss_fn=nan_aware_loss)
    with pytest.raises(NonFiniteError, match=r"step 3: .*not finite.*step-00000002"):
        _fit(trainer, poison_step=3)
    assert all(torch.isfinite(v).all() for v in _weights(trainer).values())
    for ckpt in checkpoints(tmp_path / "checkpoints"):
        state = torch.load(ckpt / TRAINER_STATE, weights_only=False)
        assert state["step"] == 2
    # no file the run wrote holds a non-finite number
    records = trainer.metrics.read()
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_nonfinite_step_skipped_when_configured(tmp_path):
    trainer = make_trainer(tmp_path, loss_fn=nan_aware_loss, nonfinite="skip")
    before = {}

    original_step = trainer.step

    def recording_step(micro_batches):
        if trainer.state["step"] == 2:
            before.update(_weights(trainer))
        return original_step(micro_batches)

    trainer.step = recording_step
    assert _fit(trainer, poison_step=3)
    assert trainer.state["skipped_steps"] == 1
    skipped = [r for r in trainer.metrics.read() if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3]
    assert all(torch.isfinite(v).all() for v in _weights(trainer).values())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    reference = make_trainer(tmp_path / "ref")
    _fit(reference)
    trainer = make_trainer(tmp_path / "run")
    _fit(trainer, steps=6)  # checkpoints at steps 2, 4, 6
    latest = checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert latest.name == "step-00000006"
    victim = max((p for p in latest.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        for i in range(0, 64):
            data[len(data) // 2 + i] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "delete":
        victim.unlink()
    else:
        (latest / MANIFEST).unlink()
    (tmp_path / "run" / "checkpoints" / "step-00000008.tmp").mkdir()  # an interrupted save's leftovers
    messages = []
    resumed = make_trainer(tmp_path / "run")
    resumed.log = messages.append
    state = resumed.resume()
    assert state["step"] == 4
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and "step-00000006" in warnings[0] and "\n" not in warnings[0]
    assert not (tmp_path / "run" / "checkpoints" / "step-00000008.tmp").exists()
    _fit(resumed, steps=6)
    final, expected = _weights(resumed), _weights(reference)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, keep_last=1)
    _fit(trainer, steps=2)
    (checkpoints(tmp_path / "checkpoints")[-1] / TRAINER_STATE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no intact checkpoint to resume from"):
        make_trainer(tmp_path).resume()


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"train\.keep_last must be >= 1"):
        make_trainer(tmp_path, keep_last=0)
