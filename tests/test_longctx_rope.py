"""RoPE for long inputs: static YaRN against transformers, and per-request (dynamic) YaRN."""

import pytest
import torch

import qwen25
from qwen25.longctx import configure, prefill
from qwen25.model import KVCache, ModelConfig, build_model
from tests.conftest import hf_qwen2

QWEN_YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


@pytest.mark.parametrize("form, overrides", [
    # Qwen2.5's published block, legacy `rope_scaling` form, head_dim 128.
    ("rope_scaling", dict(hidden_size=512, num_attention_heads=4, rope_scaling=QWEN_YARN)),
    # transformers 5's form with a short original length, so the sequence runs far into the scaled range.
    ("rope_parameters", dict(max_position_embeddings=512, rope_parameters={
        "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "rope_theta": 1e6,
        "beta_fast": 16, "beta_slow": 2})),
])
def test_yarn_logits_match_transformers(tmp_path, form, overrides):
    hf = hf_qwen2(**overrides)
    assert hf.config.rope_parameters["rope_type"] == "yarn"
    hf.save_pretrained(tmp_path)
    ours = qwen25.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert ours.config.rope_type == "yarn"
    ids = torch.randint(0, hf.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = hf(ids).logits, ours(ids).logits
        configure(ours, rope="plain")
        plain = ours(ids).logits
    assert (expected - got).abs().max() <= 1e-5
    assert (expected - plain).abs().max() > 1e-3  # the YaRN block matters at these lengths


ORIGINAL = 64
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, rope_scaling=YARN,
                      dtype="float32", initializer_range=0.1)
    return build_model(cfg, seed=0).eval()


def _ids(n, seed=0):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_dynamic_yarn_short_prompt_is_plain_rope_bit_for_bit(model):
    ids = _ids(ORIGINAL)  # at the original length: factor 1
    configure(model, rope="plain")
    plain_logits, plain_short = model(ids).logits, model(ids[:, :20]).logits
    plain_new = qwen25.generate(model, ids.tolist(), qwen25.SamplingParams(max_new_tokens=12))
    configure(model, rope="dynamic-yarn")
    assert torch.equal(model(ids).logits, plain_logits)
    assert torch.equal(model(ids[:, :20]).logits, plain_short)
    # Generation runs past the original length, but the factor chosen at prefill (1) stays.
    assert qwen25.generate(model, ids.tolist(), qwen25.SamplingParams(max_new_tokens=12)) == plain_new
    configure(model, rope="config")
    assert not torch.equal(model(ids).logits, plain_logits)  # static YaRN does change short prompts


@torch.no_grad()
def test_dynamic_yarn_factor_is_fixed_at_prefill_and_kept_through_decode(model):
    n, new = 3 * ORIGINAL, 10
    ids = _ids(n + new, seed=1)
    configure(model, rope="yarn", yarn={"factor": n / ORIGINAL})  # what this request should run with
    expected = model(ids).logits[:, n - 1:]
    configure(model, rope="dynamic-yarn")
    assert (model(ids).logits[:, n - 1:] - expected).abs().max() > 1e-3  # a longer prompt would get a larger factor
    cache = KVCache.for_model(model, 1, n + new)
    steps = [prefill(model, ids[:, :n], cache, chunk_size=50)[:, None]]  # chunked: the factor sees all n
    assert cache.rope_factor == n / ORIGINAL
    for t in range(n, n + new):
        steps.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert cache.rope_factor == n / ORIGINAL
    assert (torch.cat(steps, dim=1) - expected).abs().max() <= 1e-5


def test_rope_choices_are_checked(model):
    cfg = model.config.replace(rope_scaling=None)
    plain = build_model(cfg, seed=0)
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        configure(plain, rope="dynamic-yarn")
    configure(plain, rope="dynamic-yarn", yarn={"original_max_position_embeddings": 32})
    assert plain.model.rotary_emb.dynamic
    with pytest.raises(ValueError, match="rope must be one of"):
        configure(plain, rope="ntk")
