"""HF checkpoint directories: sharding, tied heads, dtypes, atomic writes, and every bad input named."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM as HFQwen2

import qwen25
from qwen25.model import CheckpointError, ModelConfig, build_model

CFG = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, dtype="float32")


@pytest.fixture
def saved(tmp_path):
    model = build_model(CFG, seed=1)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip_single_file(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert _same(model, qwen25.from_pretrained(path))


def test_sharded_round_trip_loads_in_transformers(tmp_path):
    model = build_model(CFG, seed=2)
    model.save_pretrained(tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    assert _same(model, qwen25.from_pretrained(tmp_path))
    hf = HFQwen2.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids).logits).abs().max() <= 1e-5
    # re-saving as one file removes the shards and the index
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]


def test_tied_checkpoint_has_no_lm_head(tmp_path):
    model = build_model(CFG.replace(tie_word_embeddings=True), seed=3)
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = qwen25.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert _same(model, loaded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(tmp_path, dtype):
    model = build_model(CFG, seed=4)
    model.save_pretrained(tmp_path, dtype=dtype)
    assert all(t.dtype == dtype for t in load_file(tmp_path / "model.safetensors").values())
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == str(dtype).removeprefix("torch.")
    loaded = qwen25.from_pretrained(tmp_path)  # the config's dtype by default
    assert next(loaded.parameters()).dtype == dtype
    assert next(qwen25.from_pretrained(tmp_path, dtype="float32").parameters()).dtype == torch.float32


def _rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'.*model\.safetensors"):
        qwen25.from_pretrained(path)


def test_unexpected_tensor_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.9\.mlp\.up_proj\.weight'"):
        qwen25.from_pretrained(path)


def test_misshaped_tensor_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 64)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' "
                                              r"has shape \[16, 64\], the config implies \[32, 64\]"):
        qwen25.from_pretrained(path)


def test_truncated_file_is_named(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*truncated"):
        qwen25.from_pretrained(path)


def test_truncated_shard_is_named(tmp_path):
    build_model(CFG).save_pretrained(tmp_path, max_shard_bytes=100_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: .*truncated"):
        qwen25.from_pretrained(tmp_path)


def test_index_pointing_at_absent_shard(tmp_path):
    build_model(CFG).save_pretrained(tmp_path, max_shard_bytes=100_000)
    sorted(tmp_path.glob("model-*.safetensors"))[0].unlink()
    with pytest.raises(CheckpointError, match=r"model-00001-of-\d+\.safetensors: file listed in the checkpoint does not exist"):
        qwen25.from_pretrained(tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        qwen25.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        qwen25.from_pretrained(tmp_path / "nope")


def test_directory_without_weights(tmp_path):
    CFG.save(tmp_path)
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json .*config\.json"):
        qwen25.from_pretrained(tmp_path)


def test_failed_save_keeps_previous_checkpoint(saved, monkeypatch):
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("qwen25.model.checkpoint.save_file", explode)
    other = build_model(CFG, seed=99)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # no temp files, nothing half-written
