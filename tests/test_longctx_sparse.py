"""Sparse prefill: the block-sparse kernel against a masked dense reference, full budgets against dense
attention, causality, pattern estimation, per-head JSON configs, and chunked prefill."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from qwen25.longctx import DualChunkConfig, SparseConfig, configure, load_patterns, prefill
from qwen25.longctx.sparse import Selection, a_shape, sparse_attend, vertical_slash
from qwen25.model import KVCache, ModelConfig, build_model
from qwen25.model.config import SparseHeadPattern

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10_000.0, dtype="float32")
BLOCK = 16


def _reference(q, k, v, selections, q_start, k_start, block):
    """Masked dense attention: key j is visible to query i iff j <= i and (block(i) - block(j) is a selected
    diagonal or j is a selected column)."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    q_pos, k_pos = torch.arange(q_start, q_start + T), torch.arange(k_start, k_start + k.shape[2])
    out, lse = torch.zeros_like(q), torch.zeros(B, H, T)
    for b in range(B):
        for h in range(H):
            sel = selections[b][h]
            diag = (q_pos[:, None] // block) - (k_pos[None, :] // block)
            visible = (torch.isin(diag, sel.diagonals) | torch.isin(k_pos, sel.columns)[None, :])
            visible &= k_pos[None, :] <= q_pos[:, None]
            scores = (q[b, h] @ k[b, h // groups].T / math.sqrt(D)).masked_fill(~visible, float("-inf"))
            lse[b, h] = scores.logsumexp(-1)
            out[b, h] = (scores - lse[b, h, :, None]).exp().nan_to_num(0.0) @ v[b, h // groups]
    return out, lse


@pytest.mark.parametrize("q_start, T, k_start, S", [
    (0, 300, 0, 300),  # a whole prompt
    (250, 130, 0, 380),  # a chunk after cached keys, not block aligned
    (400, 90, 96, 160),  # an earlier key range (as dual chunk attention's older chunks): some rows see nothing
])
def test_sparse_kernel_equals_masked_dense_reference(q_start, T, k_start, S):
    g = torch.Generator().manual_seed(q_start)
    B, H, KV, D = 2, 4, 2, 16
    q, k, v = (torch.randn(B, n, T if n == H else S, D, generator=g) for n in (H, KV, KV))
    selections = [[Selection(torch.tensor(sorted({0, *torch.randint(1, 30, (4,), generator=g).tolist()})),
                             torch.randint(0, q_start + T, (9,), generator=g)) for _ in range(H)] for _ in range(B)]
    out, lse = sparse_attend(q, k, v, selections, q_start, k_start, BLOCK)
    ref_out, ref_lse = _reference(q, k, v, selections, q_start, k_start, BLOCK)
    assert (out - ref_out).abs().max() <= 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert (lse - ref_lse).nan_to_num(0.0).abs().max() <= 1e-5


def _model(seed=0):
    return build_model(ModelConfig(**BASE), seed=seed).eval()


def _full_budget(T, block=32):
    """Every key as a column, and only the always-kept nearby diagonals: the sparse kernel must then give
    dense attention (a budget of all diagonals would be handed to the dense kernel instead)."""
    return SparseConfig(patterns=((SparseHeadPattern("vertical_and_slash", T, 50),) * 4,) * 2, threshold=0,
                        block=block)


@torch.no_grad()
def test_sparse_prefill_with_a_full_budget_equals_dense():
    model = _model()
    ids = torch.randint(0, 256, (2, 200), generator=torch.Generator().manual_seed(0))
    dense = model(ids).logits
    configure(model, attention="sparse", sparse=_full_budget(200))
    assert (model(ids).logits - dense).abs().max() <= 1e-5
    small = SparseConfig(patterns=((SparseHeadPattern("vertical_and_slash", 30, 50),) * 4,) * 2, threshold=0,
                         block=BLOCK)
    configure(model, attention="sparse", sparse=small)
    assert (model(ids).logits - dense).abs().max() > 1e-4


@torch.no_grad()
def test_sparse_prefill_inside_dual_chunk_attention_with_a_full_budget_equals_dca():
    model = _model(seed=1)
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(1))
    dca = DualChunkConfig(chunk_size=80, local_size=16)  # chunk length 64, a multiple of the block
    configure(model, attention="dca", dual_chunk=dca)
    expected = model(ids).logits
    configure(model, attention="dca", dual_chunk=dca, sparse=_full_budget(200))
    assert (model(ids).logits - expected).abs().max() <= 1e-5
    small = SparseConfig(patterns=((SparseHeadPattern("vertical_and_slash", 30, 50),) * 4,) * 2, threshold=0,
                         block=32)
    configure(model, attention="dca", dual_chunk=dca, sparse=small)
    assert (model(ids).logits - expected).abs().max() > 1e-4  # the sparse path is live in the later chunks
    configure(model, attention="dca", dual_chunk=dca, sparse=_full_budget(200))
    cache = KVCache.for_model(model, 1, 200)  # in chunks, and dense decode after the sparse prefill
    steps = [prefill(model, ids[:, :195], cache, chunk_size=100)[:, None]]
    steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(195, 200)]
    assert (torch.cat(steps, dim=1) - expected[:, 194:]).abs().max() <= 1e-5


def test_sparse_kernel_never_reads_future_keys():
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(1, 2, 200, 16, generator=g), torch.randn(1, 1, 200, 16, generator=g), \
        torch.randn(1, 1, 200, 16, generator=g)
    sel = [[Selection(torch.arange(13), torch.arange(200)) for _ in range(2)]]  # everything that is allowed
    out = sparse_attend(q, k, v, sel, 0, 0, BLOCK)[0]
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 121:], v2[:, :, 121:] = 1e4, -1e4
    assert torch.equal(sparse_attend(q, k2, v2, sel, 0, 0, BLOCK)[0][:, :, :121], out[:, :, :121])


@torch.no_grad()
def test_sparse_prefill_model_outputs_do_not_depend_on_future_tokens():
    model = _model(seed=2)
    a_shape_only = SparseConfig(patterns=((SparseHeadPattern("stream_llm", 8, 40),) * 4,) * 2, threshold=0,
                                block=BLOCK)
    configure(model, attention="sparse", sparse=a_shape_only)
    ids = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, 170:] = torch.randint(0, 256, (1, 130), generator=torch.Generator().manual_seed(3))
    before, after = model(ids).logits, model(changed).logits
    assert torch.equal(before[:, :170], after[:, :170])
    assert not torch.equal(before[:, 170:], after[:, 170:])


def test_vertical_slash_keeps_sinks_nearby_diagonals_and_what_the_last_queries_attend():
    S, Q = 1024, 64
    q_pos = torch.arange(S - Q, S)
    scores = torch.zeros(Q, S).masked_fill(torch.arange(S)[None, :] > q_pos[:, None], float("-inf"))
    scores[:, 500] = 12.0  # a column every last query attends
    scores[torch.arange(Q), q_pos - 700] = 12.0  # one diagonal, 700 positions back
    sel = vertical_slash(scores, q_pos, SparseHeadPattern("vertical_and_slash", 40, 3 * BLOCK), BLOCK)
    assert 500 in sel.columns.tolist() and set(range(30)) <= set(sel.columns.tolist()) and len(sel.columns) == 40
    near = math.ceil(100 / BLOCK) + 1  # the diagonals holding the 100 nearest offsets are always kept
    assert sel.diagonals.tolist() == list(range(near))  # a budget of 3 blocks is below that
    wide = vertical_slash(scores, q_pos, SparseHeadPattern("vertical_and_slash", 40, 20 * BLOCK), BLOCK)
    assert len(wide.diagonals) == 20 and wide.diagonals.tolist()[:near] == list(range(near))
    assert {700 // BLOCK, 700 // BLOCK + 1} & set(wide.diagonals.tolist())
    shape = a_shape(SparseHeadPattern("stream_llm", 4, 100), BLOCK)
    assert shape.columns.tolist() == [0, 1, 2, 3] and shape.diagonals.tolist() == list(range(8))


@torch.no_grad()
def test_below_the_threshold_or_within_the_budget_sparse_prefill_is_dense_attention():
    model = _model(seed=4)
    ids = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(4))
    dense = model(ids).logits
    configure(model, attention="sparse", sparse=SparseConfig(threshold=120, block=BLOCK))
    assert torch.equal(model(ids).logits, dense)
    configure(model, attention="sparse", sparse=SparseConfig(threshold=0, block=BLOCK))  # 6096 diagonals > 120
    assert torch.equal(model(ids).logits, dense)


def test_minference_pattern_file(tmp_path):
    heads = {str(h): ["vertical_and_slash", 1000, 6096, 0.98] for h in range(4)}
    heads["2"] = ["stream_llm", 64, 4096, 0.9]
    path = tmp_path / "best_pattern.json"
    path.write_text(json.dumps([heads, heads]))
    patterns = load_patterns(path, num_layers=2, num_heads=4)
    assert patterns[1][2] == SparseHeadPattern("stream_llm", 64, 4096)
    path.write_text(json.dumps([heads, {**heads, "1": ["vertical_and_slash", 0, 10, 1.0]}]))
    with pytest.raises(ValueError, match=r'best_pattern.json\[1\]\["1"\]. needs a positive integer vertical size'):
        load_patterns(path, num_layers=2, num_heads=4)
    path.write_text(json.dumps([heads]))
    with pytest.raises(ValueError, match="lists 1 layers, but the model has 2"):
        load_patterns(path, num_layers=2, num_heads=4)
    with pytest.raises(ValueError, match="'threshold' must be an integer >= 0"):
        SparseConfig(threshold=-1)


@torch.no_grad()
def test_chunked_prefill_equals_one_forward_without_a_chunk_mask():
    model = _model(seed=5)
    ids = torch.randint(0, 256, (2, 230), generator=torch.Generator().manual_seed(5))
    full = model(ids).logits[:, -1]
    configure(model, attention="chunked")
    cache = KVCache.for_model(model, 2, 230)
    assert (prefill(model, ids, cache, chunk_size=64) - full).abs().max() <= 1e-5
    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    cache = KVCache.for_model(model, 2, 230)
    F.scaled_dot_product_attention = spy
    try:
        prefill(model, ids, cache, chunk_size=64)
    finally:
        F.scaled_dot_product_attention = original
    assert all(mask is None for mask in seen)  # the chunks after the first never built a [T, S] mask


@pytest.mark.parametrize("causal, with_bias", [(True, False), (False, False), (False, True)])
def test_partial_attention_portable_path_equals_the_cpu_kernel(causal, with_bias):
    """The matmul path (used off CPU) and PyTorch's CPU flash kernel give the same out and lse."""
    from qwen25.longctx.partial import _attend_math, attend, merge_with_lse

    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(2, 4, 70, 16, generator=g), torch.randn(2, 2, 70, 16, generator=g), \
        torch.randn(2, 2, 70, 16, generator=g)
    bias = None
    if with_bias:
        bias = torch.zeros(2, 1, 70, 70).masked_fill_(torch.rand(2, 1, 70, 70, generator=g) < 0.5, float("-inf"))
        bias[0, 0, 3] = float("-inf")  # a row that sees nothing: out 0, lse -inf
    out, lse = attend(q, k, v, causal, 0.25, bias)
    ref_out, ref_lse = _attend_math(q, k, v, causal, 0.25, bias)
    assert (out - ref_out).abs().max() <= 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and (lse - ref_lse).nan_to_num(0).abs().max() <= 1e-5
    if with_bias:
        assert torch.isinf(lse[0, :, 3]).all() and (out[0, :, 3] == 0).all()
        merged, merged_lse = merge_with_lse([(out, lse), (out, lse)])
        assert (merged - out).abs().max() <= 1e-6 and torch.isinf(merged_lse[0, :, 3]).all()


def test_partial_attention_accepts_inputs_whose_head_dim_is_strided():
    """Projections can hand attention views whose last dim is not unit-stride (e.g. the transposed output of
    a few-row decode matmul); PyTorch's private CPU flash kernel would read them wrongly."""
    from qwen25.longctx.partial import _attend_math, attend

    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, n, 40, 32, generator=g)[..., ::2] for n in (4, 2, 2))  # head_dim 16, stride 2
    assert q.stride(-1) == 2
    for causal in (True, False):
        out, lse = attend(q, k, v, causal, 0.25)
        ref_out, ref_lse = _attend_math(q, k, v, causal, 0.25)
        assert (out - ref_out).abs().max() <= 1e-5 and (lse - ref_lse).abs().max() <= 1e-5
