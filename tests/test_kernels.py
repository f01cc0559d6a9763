"""Inference matmul kernels chosen by measurement: the kernels agree with F.linear, the choice is measured once, cached
per machine and shape, read back, overridable, and the model runs the plan it was given."""

import json

import pytest
import torch
import torch.nn.functional as F

import qwen25
from qwen25.inference import kernels
from qwen25.model import layers
from qwen25.model.layers import KernelPlan, kernel_plan, onednn_available, onednn_linear, set_kernel_plan, weight_major_linear


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty per-machine cache, the default plan, and the plan restored afterwards."""
    monkeypatch.setenv("QWEN25_CACHE", str(tmp_path))
    monkeypatch.delenv("QWEN25_KERNELS", raising=False)
    before = kernel_plan()
    set_kernel_plan(KernelPlan())
    yield tmp_path
    set_kernel_plan(before)


@pytest.fixture(scope="module")
def model():
    return qwen25.load_model("qwen25-tiny", dtype="float32").eval()


@pytest.mark.parametrize("rows", [1, 3, 16, 300])
def test_weight_major_kernel_equals_f_linear(rows):
    g = torch.Generator().manual_seed(rows)
    x, w, b = torch.randn(rows, 64, generator=g), torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    for bias in (None, b):
        ours = weight_major_linear(x[None], w, bias)
        assert ours.shape == (1, rows, 96) and ours.is_contiguous()
        assert torch.allclose(ours, F.linear(x[None], w, bias), atol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_kernel_equals_f_linear_and_follows_weight_updates(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for rows in (1, 3, 16, 300):
        x = torch.randn(1, rows, 64, generator=g).to(dtype)
        for bias in (None, b):
            ours = onednn_linear(x, w, bias)
            assert ours.shape == (1, rows, 96) and ours.dtype == dtype
            assert torch.allclose(ours.float(), F.linear(x, w, bias).float(), atol=tol, rtol=tol)
    x = torch.randn(2, 64, generator=g).to(dtype)
    w.mul_(-2)  # an in-place update (an optimizer step): the reordered copy must not go stale
    assert torch.allclose(onednn_linear(x, w).float(), F.linear(x, w).float(), atol=tol, rtol=tol)
    w.data = torch.randn(96, 64, generator=g).to(dtype)  # new storage
    assert torch.allclose(onednn_linear(x, w).float(), F.linear(x, w).float(), atol=tol, rtol=tol)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_onednn_plan_keeps_gradients(fresh):
    """A plan entry never takes autograd away: with gradients wanted, a planned shape runs F.linear."""
    lin = layers.Linear(64, 32)
    set_kernel_plan(KernelPlan(onednn=frozenset({(torch.float32, 2, 32, 64)})))
    x = torch.randn(2, 64, requires_grad=True)
    layers.linear(x, lin.weight, lin.bias).sum().backward()
    assert lin.weight.grad is not None and x.grad is not None
    with torch.inference_mode():
        assert torch.allclose(lin(x.detach()), F.linear(x.detach(), lin.weight, lin.bias), atol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_prefill_bucket_runs_its_kernel_in_inference_mode_only(fresh, monkeypatch):
    """Inputs past decode size share the prefill bucket: its planned kernel runs in inference mode (the engine),
    F.linear in training's no-grad evaluation."""
    lin = layers.Linear(64, 32)
    set_kernel_plan(KernelPlan(onednn=frozenset({(torch.float32, layers.PREFILL_BUCKET, 32, 64)})))
    calls = []
    monkeypatch.setattr(layers, "onednn_linear", lambda *a: calls.append(a[0].shape) or onednn_linear(*a))
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        expected = lin(x)
    assert calls == []
    with torch.inference_mode():
        assert torch.allclose(lin(x), expected, atol=1e-5)
        lin(x[:, :8])  # 16 rows: a decode bucket, not planned here
    assert calls == [(2, 20, 64)]
    assert [layers.rows_bucket(r) for r in (1, 2, 3, 16, 17, 4096)] == [1, 2, 4, 16, 256, 256]


def test_auto_measures_once_and_caches_per_machine_and_shape(fresh, model, monkeypatch):
    plan = kernels.install_kernels(model)
    entries = json.loads((fresh / "kernels.json").read_text())["entries"]
    sites = kernels.decode_sites(model)
    shapes = {tuple(s.weight.shape) for s in sites} | {tuple(w.shape) for s in sites for w, _ in s.parts or []}
    for bucket in kernels.BUCKETS:
        for out_features, in_features in shapes:
            entry = entries[f"{kernels.machine()}|float32|rows={bucket}|shape={out_features}x{in_features}"]
            assert entry["choice"] in kernels.KERNELS and set(entry["seconds"]) == set(kernels.KERNELS)
        packed = entries[f"{kernels.machine()}|float32|rows={bucket}|packed=128+64+64x128"]
        assert packed["choice"] in ("packed", "separate") and set(packed["seconds"]) == {"packed", "separate"}
    assert kernels.cpu_model() in kernels.machine() and f"torch={torch.__version__}" in kernels.machine()
    for kernel, planned in (("weight-major", plan.weight_major), ("onednn", plan.onednn)):
        assert len(planned) == sum(v["choice"] == kernel for v in entries.values())

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the cache had every shape")

    monkeypatch.setattr(kernels, "measure_bucket", no_measuring)
    set_kernel_plan(KernelPlan())
    assert kernels.install_kernels(model) == plan


def write_cache(directory, model, choice, packed_choice="packed"):
    entries = {}
    for bucket in kernels.BUCKETS:
        shapes, packed = kernels._all_keys(kernels.decode_sites(model), torch.float32, bucket)
        entries |= {kernels.key_text(k): {"choice": choice, "seconds": {}} for k in shapes}
        entries |= {kernels.key_text(k): {"choice": packed_choice, "seconds": {}} for k in packed}
    (directory / "kernels.json").write_text(json.dumps({"version": kernels.CACHE_VERSION, "entries": entries}))


def test_cached_choice_is_what_the_model_runs(fresh, model, monkeypatch):
    write_cache(fresh, model, "weight-major", packed_choice="separate")
    calls = []
    original = layers.weight_major_linear
    monkeypatch.setattr(layers, "weight_major_linear", lambda *a: calls.append(a[1].shape) or original(*a))
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        expected = model(ids).logits  # 3 rows: a decode-sized shape, run by F.linear and packed projections
        plan = kernels.install_kernels(model)
        assert plan.weight_major and plan.unfused
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert (128, 128) in calls and (64, 128) in calls and (384, 128) in calls  # q, k/v, gate/up: separately
    assert (256, 128) not in calls and (768, 128) not in calls  # never the packed q/k/v or gate/up matrix
    assert (8192, 128) in calls  # the LM head


def test_overrides_by_environment_and_argument(fresh, model, monkeypatch):
    write_cache(fresh, model, "weight-major")
    monkeypatch.setenv("QWEN25_KERNELS", "linear")
    assert kernels.install_kernels(model) == KernelPlan()
    assert kernels.install_kernels(model, "weight-major").weight_major
    monkeypatch.setenv("QWEN25_KERNELS", "weight-major")
    plan = kernels.install_kernels(model)
    assert (torch.float32, 1, 8192, 128) in plan.weight_major and not plan.unfused  # the LM head too
    if onednn_available():
        assert (torch.float32, 8, 8192, 128) in kernels.install_kernels(model, "onednn").onednn
    (fresh / "kernels.json").write_text(json.dumps({"version": 1, "entries": {}}))  # an older cache: not used
    assert kernels.read_cache() == {}
    monkeypatch.setenv("QWEN25_KERNELS", "fastest")
    with pytest.raises(ValueError, match="QWEN25_KERNELS"):
        kernels.install_kernels(model)


def test_engine_tokens_do_not_depend_on_the_plan(model):
    prompts = [[1, 2, 3], [7] * 9]
    params = qwen25.SamplingParams(max_new_tokens=10)
    before = kernel_plan()
    try:
        runs = [qwen25.Engine(model, kernels=mode).generate(prompts, params) for mode in kernels.MODES[1:]
                if mode != "onednn" or onednn_available()]
    finally:
        set_kernel_plan(before)
    tokens = [[c.token_ids for o in run for c in o.completions] for run in runs]
    assert len(tokens) == len(kernels.MODES) - (1 if onednn_available() else 2) and tokens[0][0]
    assert all(t == tokens[0] for t in tokens)


def test_kernels_command_prints_the_measured_table(fresh, capsys):
    from qwen25.inference.commands import kernels_command

    kernels_command(model="qwen25-tiny", dtype="float32", remeasure=True)
    table = capsys.readouterr().out
    assert table.startswith(f"machine: {kernels.machine()}")
    assert "| 1 | 8192 x 128 |" in table and "| 16 | packed 384+384 x 128 |" in table
    assert (fresh / "kernels.json").is_file()
