"""Configs and presets: parameter counts against the report, both RoPE forms, and rejected configs."""

import json

import pytest
import torch
from transformers import Qwen2Config

from qwen25.model import PRESET_NAMES, ConfigError, ModelConfig, build_model, count_parameters, get_preset
from qwen25.model.rope import yarn_correction_range, yarn_inv_freq


def test_report_parameter_counts():
    total, _ = count_parameters(build_model(get_preset("qwen2.5-0.5b")[0], device="meta"))
    assert total == 494_032_768
    total, non_embedding = count_parameters(build_model(get_preset("qwen2.5-7b")[0], device="meta"))
    assert round(total / 1e9, 2) == 7.62 and round(non_embedding / 1e9, 2) == 6.53


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_builds_on_meta(name):
    cfg, gen = get_preset(name)
    model = build_model(cfg, device="meta")
    assert next(model.parameters()).is_meta
    if name.endswith("-instruct"):
        assert cfg.eos_token_id == 151645 and gen["eos_token_id"] == [151645, 151643]
        assert cfg.max_position_embeddings == 32768 and cfg.rms_norm_eps == 1e-6
    elif name.startswith("qwen2.5-"):
        assert cfg.eos_token_id == 151643


def test_base_and_instruct_differences():
    assert get_preset("qwen2.5-7b")[0].max_position_embeddings == 131072
    assert get_preset("qwen2.5-3b")[0].max_position_embeddings == 32768
    assert get_preset("qwen2.5-72b")[0].rms_norm_eps == 1e-5
    assert get_preset("qwen2.5-72b-instruct")[0].rms_norm_eps == 1e-6
    assert get_preset("qwen2.5-1.5b")[0].tie_word_embeddings and not get_preset("qwen2.5-7b")[0].tie_word_embeddings


def test_legacy_and_rope_parameters_forms_agree():
    base = dict(model_type="qwen2", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    legacy = ModelConfig.from_hf_dict({**base, "rope_theta": 1e6, "rope_scaling": {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})
    new = ModelConfig.from_hf_dict({**base, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768}})
    assert legacy.rope_theta == new.rope_theta == 1e6
    assert legacy.rope_scaling == new.rope_scaling == {"rope_type": "yarn", "factor": 4.0,
                                                        "original_max_position_embeddings": 32768}
    plain = ModelConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert plain.rope_theta == 5e5 and plain.rope_scaling is None


def test_written_config_reads_back_in_transformers(tmp_path):
    cfg = get_preset("qwen2.5-7b-instruct")[0].replace(
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    cfg.save(tmp_path)
    ref = Qwen2Config.from_pretrained(tmp_path)
    assert ref.rope_parameters["rope_type"] == "yarn" and ref.rope_parameters["rope_theta"] == 1e6
    assert ref.num_key_value_heads == 4 and ref.eos_token_id == 151645
    again = ModelConfig.from_file(tmp_path)
    assert again == cfg
    # and what transformers writes reads back here
    ref.save_pretrained(tmp_path / "hf")
    assert ModelConfig.from_file(tmp_path / "hf").replace(extra={}, max_window_layers=None) == cfg.replace(extra={})


def test_unknown_keys_survive_a_round_trip(tmp_path):
    raw = get_preset("qwen2.5-0.5b")[0].to_hf_dict()
    raw["dual_chunk_attention_config"] = {"chunk_size": 262144, "local_size": 8192}
    raw["sliding_window"], raw["max_window_layers"] = 32768, 21
    cfg = ModelConfig.from_hf_dict(raw)
    cfg.save(tmp_path)
    back = json.loads((tmp_path / "config.json").read_text())
    assert back["dual_chunk_attention_config"] == {"chunk_size": 262144, "local_size": 8192}
    assert back["sliding_window"] == 32768


def test_yarn_golden_values():
    assert yarn_correction_range(128, 1e6, 32768) == (23, 40)
    _, factor = yarn_inv_freq(128, 1e6, {"factor": 4.0, "original_max_position_embeddings": 32768})
    assert abs(factor - 1.1386294361) < 1e-9


BASE = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("change, field", [
    (dict(num_key_value_heads=3), "num_attention_heads"),
    (dict(hidden_size=66), "hidden_size"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(head_dim=33), "head_dim"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(eos_token_id=100), "eos_token_id"),
    (dict(rope_scaling={"type": "llama3", "factor": 8.0}), "rope_scaling.rope_type"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling.original_max_position_embeddings"),
    (dict(model_type="llama"), "model_type"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types"),
])
def test_invalid_configs_name_the_field(tmp_path, change, field):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", **BASE, **change}))
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_file(tmp_path)
    assert f"'{field}'" in str(err.value) and str(tmp_path / "config.json") in str(err.value)


def test_missing_field_and_bad_json(tmp_path):
    incomplete = dict(BASE)
    del incomplete["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(incomplete))
    with pytest.raises(ConfigError, match="'intermediate_size' is missing"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path)


def test_rope_base_can_change_between_stages():
    model = build_model(ModelConfig(**BASE, rope_theta=10_000.0))
    ids = torch.arange(20).unsqueeze(0)
    before = model(ids).logits
    model.set_rope(1_000_000.0)
    assert model.config.rope_theta == 1e6
    assert not torch.allclose(before, model(ids).logits)
