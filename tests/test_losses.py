"""The fused, chunked LM-head cross-entropy equals logits + F.cross_entropy, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from qwen25.model.losses import linear_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 64, 1000])
def test_matches_cross_entropy(chunk_rows):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 48, generator=g, requires_grad=True)
    w = torch.randn(700, 48, generator=g, requires_grad=True)
    y = torch.randint(0, 700, (300,), generator=g)
    y[::5] = -100
    ours = linear_cross_entropy(h, w, y, chunk_rows=chunk_rows)
    (ours * 0.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.t(), y, reduction="sum")
    (ref * 0.5).backward()
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ref.item())
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-5)


def test_autocast_runs_the_matmul_in_bf16_and_stays_close():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(128, 64, generator=g, requires_grad=True)
    w = (torch.randn(500, 64, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, 500, (128,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, y)
        ref = F.cross_entropy((h @ w.t()).float(), y, reduction="sum")
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-2 * abs(ref.item())
    ours.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_no_grad_path_and_all_ignored():
    h, w = torch.randn(10, 8), torch.randn(20, 8)
    with torch.no_grad():
        assert linear_cross_entropy(h, w, torch.full((10,), -100)).item() == 0.0
        y = torch.randint(0, 20, (10,))
        assert torch.allclose(linear_cross_entropy(h, w, y), F.cross_entropy(h @ w.t(), y, reduction="sum"))


@pytest.mark.parametrize("chunk_rows", [1, 64, 1000])
def test_log_probs_match_log_softmax_in_value_and_gradients(chunk_rows):
    """Per-token log-probs through the chunked LM head: any weighting of them in the loss (DPO, GRPO) gets the
    gradients of log_softmax over full logits."""
    from qwen25.model.losses import linear_log_probs

    g = torch.Generator().manual_seed(2)
    h = torch.randn(300, 48, generator=g, requires_grad=True)
    w = torch.randn(700, 48, generator=g, requires_grad=True)
    y = torch.randint(0, 700, (300,), generator=g)
    y[::7] = -100
    weights = torch.randn(300, generator=g)
    ours = linear_log_probs(h, w, y, chunk_rows=chunk_rows)
    (ours * weights).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.log_softmax(h @ w.t(), -1).gather(1, y.clamp(min=0)[:, None]).squeeze(1).masked_fill(y == -100, 0)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert (ours[y == -100] == 0).all()
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-5)


def test_model_logprobs_equal_full_logits():
    from qwen25.model import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, dtype="float32")
    model = build_model(cfg, seed=0)
    ids = torch.randint(0, 200, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    out = model(ids, labels=labels, return_logprobs=True)
    assert out.logits is None
    full = torch.log_softmax(model(ids).logits.float(), -1)
    ref = full.gather(2, labels.clamp(min=0)[..., None]).squeeze(-1).masked_fill(labels == -100, 0)
    torch.testing.assert_close(out.logprobs, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, -ref.sum(), rtol=1e-6, atol=1e-5)
