"""Corpus assembly, the packed loader (determinism, resume, mixture, document masking, length mixture),
schedules and optimizer groups."""

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from qwen25.data.corpus import CorpusSpec, build_corpus, is_heldout, read_jsonl
from qwen25.data.loader import PackedLoader
from qwen25.data.shards import ShardSet
from qwen25.data.synthetic_math import math_documents
from qwen25.model import ModelConfig, build_model
from qwen25.training.distributed import apply_activation_checkpointing
from qwen25.training.optim import Schedule, param_groups

EOT = 99


def write_shards(directory, domains: dict[str, np.ndarray], vocab: int = 100):
    shards = []
    for domain, data in domains.items():
        data = data.astype("<u4")
        (directory / domain).mkdir(parents=True)
        (directory / domain / "shard-00000.bin").write_bytes(data.tobytes())
        shards.append({"file": f"{domain}/shard-00000.bin", "domain": domain, "tokens": len(data), "docs": 1,
                       "sha256": hashlib.sha256(data.tobytes()).hexdigest()})
    manifest = {"tokenizer_sha256": "x", "vocab_size": vocab, "eot_id": EOT, "shards": shards}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return ShardSet.open(directory)


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 5000)
    a[rng.integers(0, 5000, 60)] = EOT
    b = rng.integers(50, 99, 3000)
    return write_shards(tmp_path, {"a": a, "b": b})


def test_loader_is_deterministic_and_resumable(shards):
    def make(seed=1):
        return PackedLoader(shards, seq_len=32, rows_per_step=6, mixture={"a": 0.5, "b": 0.5}, seed=seed)

    first, second = make(), make()
    for _ in range(4):
        x, y = first.next_batch(), second.next_batch()
        assert torch.equal(x.input_ids, y.input_ids) and x.domains == y.domains
    assert not torch.equal(make(2).next_batch().input_ids, make(1).next_batch().input_ids)
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    resumed = make()
    resumed.load_state_dict(state)
    for _ in range(30):  # well past an epoch of domain b, so the permutation changes too
        assert torch.equal(first.next_batch().input_ids, resumed.next_batch().input_ids)


def test_rows_are_contiguous_windows_with_shifted_labels(shards):
    loader = PackedLoader(shards, seq_len=16, rows_per_step=8, mixture={"a": 1.0}, seed=0)
    batch = loader.next_batch()
    stream = np.asarray(shards.domains["a"][0])
    for ids, labels in zip(batch.input_ids, batch.labels):
        assert torch.equal(ids[1:], labels[:-1])
        start = next(i for i in range(0, len(stream) - 16, 16) if np.array_equal(stream[i:i + 16], ids.numpy()))
        assert stream[start + 16] == labels[-1]


def test_mixture_weights_apply_at_sampling_time(shards):
    loader = PackedLoader(shards, seq_len=8, rows_per_step=500, mixture={"a": 0.8, "b": 0.2}, seed=0)
    share = loader.next_batch().domains.count("a") / 500
    assert 0.74 < share < 0.86
    with pytest.raises(ValueError, match="mixture names domain 'c'"):
        PackedLoader(shards, seq_len=8, rows_per_step=4, mixture={"c": 1.0}, seed=0)


def test_document_masking_segments_restart_positions(shards):
    loader = PackedLoader(shards, seq_len=64, rows_per_step=16, mixture={"a": 1.0}, seed=0, document_masking=True)
    batch = loader.next_batch()
    for ids, pos, seg in zip(batch.input_ids, batch.position_ids, batch.segment_ids):
        for t in range(1, 64):
            new = ids[t - 1] == EOT
            assert bool(seg[t] != seg[t - 1]) == bool(new)
            assert pos[t] == (0 if new else pos[t - 1] + 1)
    assert any(len(set(s.tolist())) > 1 for s in batch.segment_ids)


def test_length_mixture_shares(shards):
    loader = PackedLoader(shards, seq_len=64, rows_per_step=400, mixture={"a": 1.0}, seed=0, long_fraction=0.4,
                          min_short_len=8)
    batch = loader.next_batch()
    long_rows = sum(int(s.max()) == 1 for s in batch.segment_ids)
    assert 0.33 < long_rows / 400 < 0.47
    for seg, pos in zip(batch.segment_ids, batch.position_ids):
        length = int((seg == 1).sum())
        assert length in (64, 32, 16, 8) and int(pos.max()) == length - 1


def test_segments_in_the_model_equal_separate_sequences():
    """Packing with segment ids computes exactly what running each document alone computes."""
    cfg = ModelConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, dtype="float32")
    model = build_model(cfg, seed=0).eval()
    docs = [torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 2)]
    packed = torch.cat(docs)[None]
    segment = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    position = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        together = model(packed, position_ids=position, segment_ids=segment).logits[0]
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
    assert (together - alone).abs().max() < 1e-5


def test_corpus_domains_split_and_licenses(tmp_path):
    spec = CorpusSpec(bytes_per_domain={"code": 60_000, "en": 60_000, "zh": 60_000, "math": 20_000},
                      heldout_per_mille=200, seed=3)
    manifest = build_corpus(spec, tmp_path / "a", log=lambda *_: None)
    train = list(read_jsonl(tmp_path / "a" / "train.jsonl"))
    heldout = list(read_jsonl(tmp_path / "a" / "heldout.jsonl"))
    assert {d["domain"] for d in train} == {"code", "en", "zh", "math"}
    assert all(set(d) == {"text", "id", "source", "domain", "license"} for d in train + heldout)
    assert len({d["id"] for d in train + heldout}) == len(train) + len(heldout)
    assert heldout and not {d["text"] for d in train} & {d["text"] for d in heldout}
    assert all(is_heldout(d["text"], 200) for d in heldout) and not any(is_heldout(d["text"], 200) for d in train)
    assert all(s["license"] for s in manifest["sources"])
    build_corpus(spec, tmp_path / "b", log=lambda *_: None)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()


def test_synthetic_math_answers_are_correct():
    checked = 0
    for doc in math_documents(20, seed=5):
        for block in doc.split("\n\n"):
            question, answer = block.rsplit("\n", 1)
            value = int(answer.split(": ")[1])
            drill = re.fullmatch(r"(\d+) ([+\-*]) (\d+) =", question)
            if drill:
                a, op, b = int(drill[1]), drill[2], int(drill[3])
                assert value == {"+": a + b, "-": a - b, "*": a * b}[op]
                checked += 1
    assert checked > 50


def test_schedules():
    cos = Schedule("cosine", peak=1.0, total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(99) == pytest.approx(0.1, abs=1e-3)
    assert cos(55) == pytest.approx(0.55, abs=1e-9)
    wsd = Schedule("wsd", peak=1.0, total_steps=100, warmup_steps=10, min_ratio=0.0, decay_fraction=0.2)
    assert wsd(50) == 1.0 and wsd(79) == 1.0 and wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    with pytest.raises(ValueError, match="schedule must be"):
        Schedule("linear", 1.0, 10)


def test_no_weight_decay_on_norms_and_biases():
    cfg = ModelConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, dtype="float32")
    model = build_model(cfg)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}
    assert all("norm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in (decay, no_decay)) == len(list(model.parameters()))  # tied counted once


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = ModelConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, dtype="float32")
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = build_model(cfg, seed=1)
        if checkpointing:
            apply_activation_checkpointing(model)
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert list(model.state_dict()) == list(build_model(cfg, seed=1).state_dict())  # names unchanged
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
