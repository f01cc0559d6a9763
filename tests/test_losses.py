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
