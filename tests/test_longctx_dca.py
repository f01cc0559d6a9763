"""Dual chunk attention: position maps, equality with dense attention up to chunk_size, a brute-force
reference beyond it, decode against prefill, and Qwen2.5-1M's config block."""

import json
import math

import pytest
import torch

from qwen25.longctx import DualChunkConfig, configure
from qwen25.longctx.dca import DualChunkAttention, logit_scale, query_positions
from qwen25.model import ConfigError, KVCache, ModelConfig, build_model
from qwen25.loading import prepare
from qwen25.model.attention import AttentionMask
from qwen25.model.rope import RotaryEmbedding, apply_rotary

QWEN_1M = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
CHUNK, LOCAL = 48, 16  # chunk length L = 32
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10_000.0, dtype="float32")


def test_position_maps_and_logit_scale():
    L, c = 253952, 262144  # Qwen2.5-1M
    pos = torch.tensor([0, 5, L - 1, L, L + 8191, L + 8192, 3 * L + 7])
    own, prev, older = query_positions(pos, L, c)
    assert own.tolist() == [0, 5, L - 1, 0, 8191, 8192, 7]
    assert prev.tolist() == [L, L + 5, c, L, c - 1, c, L + 7]  # i mod L + L, clamped to c
    assert set(older.tolist()) == {c}  # min(2L - 1, c)
    assert set(query_positions(pos, 10, 100)[2].tolist()) == {19}  # 2L - 1 when it is below c
    assert logit_scale(1000, 0) == 1.0 and logit_scale(262144, 262144) == 1.0
    assert logit_scale(4 * 262144, 262144) == pytest.approx(0.1 * math.log(4) + 1)


def _model(seed=0, **dca):
    cfg = ModelConfig(**BASE, dual_chunk_attention_config={"chunk_size": CHUNK, "local_size": LOCAL, **dca})
    return prepare(build_model(cfg, seed=seed).eval())  # the loader's choice: dual chunk attention from the config


@torch.no_grad()
def test_dca_equals_dense_up_to_chunk_size_and_differs_beyond():
    model = _model()
    assert isinstance(model.model.attention, DualChunkAttention)  # chosen from the config
    ids = torch.randint(0, 256, (2, CHUNK + 20), generator=torch.Generator().manual_seed(0))
    dca = model(ids).logits
    configure(model, attention="dense")
    dense = model(ids).logits
    assert (dca[:, :CHUNK] - dense[:, :CHUNK]).abs().max() <= 1e-5
    assert (dca[:, CHUNK + 2:] - dense[:, CHUNK + 2:]).abs().max() > 1e-4


def _reference(q, k, v, L, c, s):
    """Dense softmax over the full [T, T] score matrix, entry (i, j) scored with the DCA position pair of
    (i, j): the key at j mod L, the query by whether j is in i's chunk, the one before, or older."""
    B, H, T, D = q.shape
    rotary = RotaryEmbedding(D, 10_000.0)
    groups = H // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    i = torch.arange(T)
    k_rot = apply_rotary(k, *rotary((i % L)[None], torch.float32))
    scores = {}
    for name, q_pos in (("own", i % L), ("previous", (i % L + L).clamp(max=c)), ("older", 0 * i + min(2 * L - 1, c))):
        scores[name] = apply_rotary(q, *rotary(q_pos[None], torch.float32)) @ k_rot.transpose(-1, -2)
    chunk_i, chunk_j = (i // L)[:, None], (i // L)[None, :]
    full = torch.where(chunk_i == chunk_j, scores["own"],
                       torch.where(chunk_i - 1 == chunk_j, scores["previous"], scores["older"]))
    full = (full * s * s / math.sqrt(D)).masked_fill(i[None, :] > i[:, None], float("-inf"))
    return full.softmax(-1) @ v


@pytest.mark.parametrize("chunks", [[200], [37, 1, 90, 72]])  # one forward; uneven chunks through the cache
def test_chunked_dca_equals_brute_force_reference(chunks):
    B, H, KV, T, D = 1, 4, 2, 200, 16
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, n, T, D, generator=g) for n in (H, KV, KV))
    original = 50  # logit scaling on: s = 0.1 ln(200 / 50) + 1
    cfg = DualChunkConfig(chunk_size=CHUNK, local_size=LOCAL, original_max_position_embeddings=original)
    dca = DualChunkAttention(cfg, RotaryEmbedding(D, 10_000.0))
    cache = KVCache(1, B, KV, D, capacity=16, dtype=torch.float32)
    cache.prompt_length = T
    outs, start = [], 0
    for n in chunks:
        mask = AttentionMask.build(None, B, n, start, q.device)
        outs.append(dca(q[:, :, start:start + n], k[:, :, start:start + n], v[:, :, start:start + n], None, None,
                        mask, cache, 0))
        cache.advance(n)
        start += n
    expected = _reference(q, k, v, CHUNK - LOCAL, CHUNK, logit_scale(T, original))
    assert (torch.cat(outs, dim=2) - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_dca_decode_equals_prefill_rows():
    model = _model(seed=2)
    ids = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(2))  # 4+ chunks of 32
    full = model(ids).logits
    cache = KVCache.for_model(model, 2, 8)
    steps = [model(ids[:, :100], cache=cache).logits] + [model(ids[:, t:t + 1], cache=cache).logits for t in range(100, 150)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


@torch.no_grad()
def test_logit_scaling_applies_beyond_the_original_length():
    ids = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(3))
    plain = _model(seed=3)(ids).logits
    scaled = _model(seed=3, original_max_position_embeddings=60)(ids).logits
    short = _model(seed=3, original_max_position_embeddings=120)(ids).logits
    assert torch.equal(plain, short)  # up to the original length, s = 1
    assert (plain - scaled).abs().max() > 1e-4


def test_padded_batches_are_refused():
    model = _model()
    ids, mask = torch.ones(2, 10, dtype=torch.long), torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="unpadded"):
        model(ids, attention_mask=mask).logits


def test_qwen_1m_block_parses_and_round_trips(tmp_path):
    patterns = [{str(h): ["vertical_and_slash", 1000, 6096, 0.9] for h in range(4)} for _ in range(2)]
    block = {**QWEN_1M, "sparse_attention_config": patterns, "sparse_attention_enabled": True,
             "sparse_attention_threshold": 32768}
    cfg = ModelConfig(**BASE, dual_chunk_attention_config=block)
    parsed = cfg.dual_chunk
    assert (parsed.chunk_size, parsed.local_size, parsed.chunk_len) == (262144, 8192, 253952)
    assert parsed.sparse_attention_enabled and parsed.sparse_attention_last_q == 64
    assert parsed.sparse_attention_config[1][3] == ("vertical_and_slash", 1000, 6096)
    cfg.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dual_chunk_attention_config"] == block
    assert ModelConfig.from_file(tmp_path) == cfg
    no_sparse = ModelConfig(**BASE, dual_chunk_attention_config=QWEN_1M).dual_chunk
    assert not no_sparse.sparse_attention_enabled and no_sparse.sparse_attention_config is None
    assert "dual_chunk_attention_config" not in ModelConfig(**BASE).to_hf_dict()


@pytest.mark.parametrize("block, field", [
    ({"chunk_size": 100, "local_size": 100}, "dual_chunk_attention_config.local_size"),
    ({"chunk_size": 0}, "dual_chunk_attention_config.chunk_size"),
    ({"chunk_size": 100, "local_size": -1}, "dual_chunk_attention_config.local_size"),
    ({"original_max_position_embeddings": "32k"}, "dual_chunk_attention_config.original_max_position_embeddings"),
    ({"local_sise": 10}, "dual_chunk_attention_config.local_sise"),
    ({"sparse_attention_enabled": "yes"}, "dual_chunk_attention_config.sparse_attention_enabled"),
    ({"sparse_attention_config": [{}]}, "dual_chunk_attention_config.sparse_attention_config"),
    ({"sparse_attention_config": [{str(h): ["vertical_and_slash", 10, 10] for h in range(4)},
                                  {**{str(h): ["vertical_and_slash", 10, 10] for h in range(3)},
                                   "3": ["block_sparse", 8, 1]}]},
     'dual_chunk_attention_config.sparse_attention_config[1]["3"]'),
    ([262144, 8192], "dual_chunk_attention_config"),
])
def test_invalid_dual_chunk_blocks_name_the_field(tmp_path, block, field):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", **BASE,
                                                      "dual_chunk_attention_config": block}))
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_file(tmp_path)
    assert f"field '{field}'" in str(err.value) and str(tmp_path / "config.json") in str(err.value)
