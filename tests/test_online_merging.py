"""The Online Merging Optimizer: exactly AdamW with merging off, OnTIES's sign election and top-p trim, OnDARE's
drop-and-rescale, and the merged update of one step against the formula."""

import pytest
import torch

from qwen25.training.online_merging import OnlineMergingAdamW, dare_, task_vector, ties_merge, top_p_


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)}


def _run(optimizer_factory, steps=5):
    start = _params()
    params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    opt = optimizer_factory(params)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return {k: p.detach() for k, p in params.items()}


def _groups(params, wd=0.1):
    return [{"params": [("w", params["w"])], "weight_decay": wd}, {"params": [("b", params["b"])], "weight_decay": 0.0}]


@pytest.mark.parametrize("mode", ["ondare", "onties"])
def test_without_merging_it_is_exactly_adamw(mode):
    ours = _run(lambda ps: OnlineMergingAdamW(_groups(ps), lr=1e-2, betas=(0.9, 0.95), mode=mode, reserve=1.0,
                                              alpha=0.0))
    ref = _run(lambda ps: torch.optim.AdamW([{"params": [ps["w"]], "weight_decay": 0.1},
                                             {"params": [ps["b"]], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95),
                                            foreach=False))
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k


def test_ties_sign_election_keeps_agreeing_entries_and_the_larger_of_a_conflict():
    tau = torch.tensor([2.0, 2.0, -1.0, 0.5, 0.0, -3.0])
    delta = torch.tensor([1.0, -1.0, 3.0, -0.4, -2.0, -1.0])
    merged = ties_merge(tau, delta, alpha=0.25)
    expected = torch.tensor([0.25 * 2 + 0.75 * 1,  # same sign: both, weighted
                             0.25 * 2,  # conflict, tau larger: tau only
                             0.75 * 3,  # conflict, delta larger: delta only
                             0.25 * 0.5,  # tau wins 0.5 vs 0.4
                             0.75 * -2,  # tau is zero: no vote, delta kept
                             0.25 * -3 + 0.75 * -1])
    torch.testing.assert_close(merged, expected)


def test_top_p_keeps_the_largest_magnitudes():
    t = torch.tensor([0.1, -5.0, 3.0, -0.2, 4.0, 0.0, 1.0, -2.0, 0.3, 0.05])
    kept = top_p_(t.clone(), 0.3)  # int(0.3 * 10) = 3 entries: -5, 4, 3
    assert torch.equal(kept, torch.tensor([0, -5.0, 3.0, 0, 4.0, 0, 0, 0, 0, 0]))
    assert torch.equal(top_p_(t.clone(), 0.05), t)  # int(0.5) = 0: nothing trimmed, as the reference code
    rescaled = top_p_(t.clone(), 0.3, rescale=True)
    torch.testing.assert_close(rescaled.abs().sum(), t.abs().sum())
    assert torch.equal(rescaled != 0, kept != 0)


def test_dare_drops_with_probability_1_minus_p_and_rescales_the_rest():
    t = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    out = dare_(t.clone(), 0.25, torch.Generator().manual_seed(3))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.005
    torch.testing.assert_close(out[kept], t[kept] / 0.25)
    assert abs(out.sum().item() - t.sum().item()) < 0.02 * t.abs().sum().item()  # unbiased in expectation
    again = dare_(t.clone(), 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # the mask is a function of the seed
    rescaled = dare_(t.clone(), 0.25, torch.Generator().manual_seed(3), rescale=True)
    torch.testing.assert_close(rescaled.abs().sum(), t.abs().sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("mode", ["ondare", "onties"])
def test_one_merged_step_matches_the_formula(mode):
    """reserve 1 (no drop): theta + (1 - alpha) delta + alpha tau (OnDARE; tau clamped), TIES election (OnTIES)."""
    alpha = 0.3
    base = {k: v - 0.7 * torch.randn(v.shape, generator=torch.Generator().manual_seed(9)) for k, v in _params().items()}
    reference = _params()
    merged = _run(lambda ps: OnlineMergingAdamW(_groups(ps, wd=0.0), lr=1e-2, mode=mode, reserve=1.0, alpha=alpha,
                                                base=base, reference=reference), steps=1)
    plain = _run(lambda ps: torch.optim.AdamW(list(ps.values()), lr=1e-2, weight_decay=0.0, foreach=False), steps=1)
    for k, start in _params().items():
        delta = plain[k] - start
        tau = task_vector(base, reference, k)
        if mode == "ondare":
            expected = start + (1 - alpha) * delta + alpha * tau.clamp(-1, 1)
        else:
            expected = start + ties_merge(tau, delta, alpha)
        torch.testing.assert_close(merged[k], expected, rtol=1e-6, atol=1e-7)


def test_missing_or_mismatched_models_are_named():
    params = {k: torch.nn.Parameter(v) for k, v in _params().items()}
    with pytest.raises(ValueError, match="needs the base and reference"):
        OnlineMergingAdamW(_groups(params), lr=1e-3, alpha=1e-7)
    with pytest.raises(ValueError, match="base model has no parameter 'b'"):
        OnlineMergingAdamW(_groups(params), lr=1e-3, alpha=1e-7, base={"w": torch.zeros(6, 5)}, reference=_params())
    with pytest.raises(ValueError, match="reserve rate"):
        OnlineMergingAdamW(_groups(params), lr=1e-3, reserve=0.0, alpha=0.0)
