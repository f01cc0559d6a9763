"""Weight-only quantization: the arithmetic's error bounds, both kernel paths against a dequantized
reference, the model conversion, the directory round trip and its errors, and (slow) the real model's
agreement and perplexity bounds."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import qwen25
from qwen25.cli import main
from qwen25.generation import SamplingParams, generate
from qwen25.inference import kernels, quant_kernels
from qwen25.inference.engine import Engine
from qwen25.inference.gptq import calibration_windows, input_hessians
from qwen25.inference.kernels import install_kernels
from qwen25.inference.quant_kernels import (
    dequantize_groups,
    dequantize_int8,
    pack_int4,
    pack_nibbles,
    quantize_groups,
    quantize_int8,
    unpack_int4_t,
    unpack_nibbles,
)
from qwen25.inference.quantize import (QuantizationConfig, QuantizedLinear, default_int8_group_size,
                                      quantize_checkpoint, quantize_model)
from qwen25.model import CheckpointError, ConfigError, ModelConfig, build_model
from qwen25.model.layers import kernel_plan, set_kernel_plan

CONFIGS = [QuantizationConfig("int8"), QuantizationConfig("int4", 32), QuantizationConfig("int8", lm_head="int8"),
           QuantizationConfig("int4", 64, lm_head="int4"), QuantizationConfig("int8", int8_group_size=32),
           QuantizationConfig("int4", 64, lm_head="int8", int8_group_size=128)]


def small_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=384, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, dtype="bfloat16", eos_token_id=1)
    values.update(overrides)
    return ModelConfig(**values)


def small_model(dtype: str = "bfloat16", **overrides):
    return build_model(small_config(dtype=dtype, **overrides), seed=0).eval()


@pytest.fixture
def model_dir(tmp_path):
    """A saved bf16 model with a tokenizer file (a stand-in) beside it."""
    path = tmp_path / "bf16"
    small_model().save_pretrained(path)
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


@pytest.fixture(params=["kernel", "dequantized"])
def path_choice(request, monkeypatch):
    """Force one of the two ways QuantizedLinear multiplies, whatever this machine measured."""
    monkeypatch.setattr(QuantizedLinear, "packed_rows", 10**9 if request.param == "kernel" else 0)
    return request.param


# ---- arithmetic ---------------------------------------------------------------------------------------------

def test_int8_error_is_at_most_half_a_step_per_row():
    w = torch.randn(96, 160) * torch.rand(96, 1) * 0.1
    w[5] = 0  # an all-zero row stays exactly zero
    q, scales = quantize_int8(w, torch.float32)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert (q.abs().amax(1)[w.abs().amax(1) > 0] == 127).all()  # each row's range is used fully
    err = (dequantize_int8(q, scales, torch.float32) - w).abs()
    assert (err <= scales[:, None] / 2 + 1e-7).all()
    assert (err[5] == 0).all()


def test_int4_error_is_at_most_half_a_step_per_group():
    w = torch.randn(64, 256) * 0.05 + torch.randn(64, 1) * 0.01  # groups not centred on zero
    w[3, :64] = 0.25  # a constant group is exact
    codes, scales, zeros = quantize_groups(w, 64, torch.float32)
    assert codes.dtype == torch.uint8 and codes.max() <= 15 and scales.shape == zeros.shape == (64, 4)
    deq = dequantize_groups(codes, scales, zeros, torch.float32)
    step = scales.repeat_interleave(64, dim=1)
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(deq[3, :64], w[3, :64])


def test_grouped_int8_error_is_at_most_half_a_step_and_splits_into_two_int4_matrices():
    """Grouped int8: 256 levels per group; its two int4 halves (what the kernel multiplies) add up to exactly
    the dequantized weight, and the portable codes read back from them."""
    w = torch.randn(100, 256) * 0.05 + torch.randn(100, 1) * 0.01
    codes, scales, zeros = quantize_groups(w, 64, torch.float32, bits=8)
    assert codes.dtype == torch.uint8 and codes.max() == 255 and codes.min() == 0  # the range is used
    deq = dequantize_groups(codes, scales, zeros, torch.float32, bits=8)
    assert ((deq - w).abs() <= scales.repeat_interleave(64, dim=1) * 0.5 + 1e-6).all()
    # bf16 scales and zeros: codes round against them as stored, so only a group's ends can move, by at most
    # the rounding of the zero and of 255 steps (a step and a bit; inside the range still half a step)
    codes, scales, zeros = quantize_groups(w, 64, torch.bfloat16, bits=8)
    deq = dequantize_groups(codes, scales, zeros, torch.float32, bits=8)
    step = scales.float().repeat_interleave(64, dim=1)
    assert ((deq - w).abs() <= step + zeros.float().abs().repeat_interleave(64, dim=1) / 256).all()
    assert ((deq - w).abs() <= step / 2 + 1e-6).float().mean() > 0.99
    packed, sz = quant_kernels.split_int8_groups(codes, scales, zeros, torch.bfloat16)
    assert packed.shape == (2, 128, 128) and sz.shape == (2, 4, 128, 2)
    if quant_kernels.int4_block() is None:  # reading the halves back needs the layout
        pytest.skip("this CPU's int4 packing has a layout qwen25 does not read back")
    halves = quant_kernels.int8_groups_dequantized_t(packed, sz.float(), torch.float32)[:, :100].t()
    assert torch.allclose(halves, deq, rtol=0, atol=1e-6)
    assert torch.equal(quant_kernels.join_int8_groups(packed, 100), codes)


def test_bf16_scales_still_bound_the_error():
    """Codes are rounded against the scales as stored, so rounding the scales to bf16 costs no extra step."""
    w = torch.randn(32, 128)
    codes, scales, zeros = quantize_groups(w, 32, torch.bfloat16)
    deq = dequantize_groups(codes, scales, zeros, torch.float32)
    assert ((deq - w).abs() <= scales.float().repeat_interleave(32, dim=1) * 0.5 + 1e-3).all()


def test_int4_group_size_must_divide_the_input():
    with pytest.raises(ValueError, match="divisible"):
        quantize_groups(torch.randn(16, 96), 64, torch.float32)
    with pytest.raises(ValueError, match="group size must be one of"):
        quantize_groups(torch.randn(16, 96), 48, torch.float32)


def test_nibbles_and_the_kernel_layout_read_back():
    codes = torch.randint(0, 16, (100, 64), dtype=torch.uint8)  # 100 rows: padded to whole packed blocks
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)
    if quant_kernels.int4_block() is None:
        pytest.skip("this CPU's int4 packing has a layout qwen25 does not read back (codes are kept instead)")
    packed = pack_int4(codes)
    assert packed.shape == (128, 32)
    assert torch.equal(unpack_int4_t(packed)[:, :100].t() + 8, codes.to(torch.int8))


# ---- the layer ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,group", [("int8", None), ("int4", 32), ("int4", 128), ("int8", 32), ("int8", 128)])
@pytest.mark.parametrize("rows", [1, 5, 48])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantized_matmul_equals_the_dequantized_reference(scheme, group, rows, dtype, path_choice):
    torch.manual_seed(0)
    weight, bias = (torch.randn(200, 256) * 0.05).to(dtype), torch.randn(200).to(dtype)  # 200: not whole blocks
    layer = QuantizedLinear.from_weight(weight, bias, scheme, group)
    x = torch.randn(rows, 256).to(dtype)
    expected = x.double() @ layer.weight.double().t() + bias.double()
    got = layer(x)
    assert got.dtype == dtype and got.shape == (rows, 200) and got.is_contiguous()
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4  # bf16 output: 8 bits of mantissa
    assert (got.double() - expected).abs().max() <= tolerance * expected.abs().max()
    assert (layer.weight.double() - weight.double()).abs().max() <= (0.01 if scheme == "int8" else 0.05)
    if scheme == "int8" and group:  # finer than one scale per row, on the same weights
        per_row = QuantizedLinear.from_weight(weight, bias, "int8")
        assert (layer.weight - weight).float().norm() < (per_row.weight - weight).float().norm()


@pytest.mark.parametrize("scheme,group", [("int4", 32), ("int8", 64)])
def test_a_cpu_whose_int4_layout_is_unreadable_keeps_the_portable_codes(scheme, group, monkeypatch):
    """Where the packed layout cannot be read back, the portable codes are kept beside it: the state dict and
    the dequantized path come from them and equal what a readable layout gives."""
    from qwen25.inference import quantize as quantize_module

    weight = torch.randn(96, 128) * 0.05
    readable = QuantizedLinear.from_weight(weight, None, scheme, group)
    monkeypatch.setattr(quantize_module, "int4_block", lambda: None)
    kept = QuantizedLinear.from_weight(weight, None, scheme, group)
    assert kept.codes is not None and readable.codes is None
    assert all(torch.equal(a, b) for a, b in zip(kept.portable().values(), readable.portable().values()))
    assert torch.allclose(kept.dequantized_t(torch.float32), readable.dequantized_t(torch.float32), rtol=0, atol=1e-6)


def test_leading_dimensions_and_the_state_dict_form(path_choice):
    layer = QuantizedLinear.from_weight(torch.randn(128, 64), None, "int4", 32)
    x = torch.randn(2, 3, 64)
    assert layer(x).shape == (2, 3, 128)
    state = layer.state_dict()
    assert set(state) == {"qweight", "scales", "zeros"}
    assert state["qweight"].dtype == torch.uint8 and state["qweight"].shape == (128, 32)
    again = QuantizedLinear(64, 128, False, "int4", 32, torch.float32)
    again.load_state_dict(state)
    assert torch.equal(again(x), layer(x))
    with pytest.raises(RuntimeError, match="zeros"):
        again.load_state_dict({k: v for k, v in state.items() if k != "zeros"})


# ---- the model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_quantized_model_stays_close_to_the_original(config, path_choice):
    base = small_model(dtype="float32")
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = base(ids).logits
        got = quantize_model(copy.deepcopy(base), config)(ids).logits
    relative = ((got - expected).norm() / expected.norm()).item()
    assert relative < (0.02 if config.scheme == "int8" else 0.2)


def test_fused_layers_replace_the_separate_ones():
    model = quantize_model(small_model(), QuantizationConfig("int8"))
    names = set(model.state_dict())
    assert "model.layers.0.self_attn.qkv_proj.qweight" in names and "model.layers.0.mlp.gate_up_proj.scales" in names
    assert not any(n.endswith(("q_proj.weight", "gate_proj.weight", "up_proj.weight")) for n in names)
    assert model.model.layers[0].self_attn.qkv_proj.bias is not None
    assert model.config.extra["quantization_config"]["quant_method"] == "qwen25-int8"


def test_cached_decode_equals_the_full_forward():
    """Decoding runs the packed kernels on one row, the prompt the dequantized matmul: same tokens (fp32)."""
    model = quantize_model(small_model(dtype="float32"), QuantizationConfig("int4", 32))
    prompt = [5, 17, 33, 2, 99, 250, 7, 8]
    new = generate(model, [prompt], SamplingParams(max_new_tokens=12))[0]
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + new])).logits[0]
    assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == new


def test_moe_models_are_refused():
    moe = build_model(small_config(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                   shared_expert_intermediate_size=32), device="meta")
    with pytest.raises(ValueError, match="MoE"):
        quantize_model(moe, QuantizationConfig("int8"))


# ---- directories --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_directory_round_trip_is_exact(model_dir, tmp_path, config):
    out = quantize_checkpoint(model_dir, tmp_path / "q", config.scheme, config.group_size, config.lm_head,
                              int8_group_size=config.int8_group_size)
    in_memory = quantize_model(qwen25.from_pretrained(model_dir), config)
    loaded = qwen25.from_pretrained(out)
    expected, got = in_memory.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, in_memory(ids).logits)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == f"qwen25-{config.scheme}" and saved["lm_head"] == config.lm_head
    assert saved["int8_group_size"] == config.int8_group_size
    assert (out / "merges.txt").read_text() == "#version: 0.2\n"
    assert (out / "generation_config.json").is_file()
    assert isinstance(qwen25.load_model(str(out)).model.layers[1].mlp.down_proj, QuantizedLinear)


def test_tied_embeddings(tmp_path):
    path = tmp_path / "tied"
    small_model(tie_word_embeddings=True).save_pretrained(path)
    kept = qwen25.from_pretrained(quantize_checkpoint(path, tmp_path / "kept", "int8"))
    assert kept.lm_head.weight is kept.model.embed_tokens.weight
    head = qwen25.from_pretrained(quantize_checkpoint(path, tmp_path / "head", "int8", lm_head="int8"))
    assert isinstance(head.lm_head, QuantizedLinear)
    assert (head.lm_head.weight - head.model.embed_tokens.weight).abs().max() < 0.01


def test_cli_quantize_then_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "q4"
    main(["quantize", "--model", str(model_dir), "--scheme", "int4", "--group-size", "64", "--method", "rtn", "--out",
          str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    main(["generate", "--model", str(out), "--prompt-ids", "3 1 4 1 5", "--max-new-tokens", "4"])
    assert capsys.readouterr().out.strip()
    main(["info", str(out)])
    printed = capsys.readouterr().out
    assert "quantized, qwen25-int4" in printed and "warning" not in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--model", str(model_dir), "--scheme", "int4", "--out", str(out)])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", "--model", str(model_dir), "--scheme", "int8", "--group-size", "64", "--out",
              str(tmp_path / "x")])
    assert "--group-size 64 is for int4" in capsys.readouterr().err


def test_int8_is_grouped_by_default_in_commands_and_per_channel_on_request(model_dir, tmp_path, capsys):
    """`qwen25 quantize --scheme int8` picks groups of 128, or the largest kernel size the layer widths allow
    (this model's intermediate width is 192: 64); `--int8-group-size 0` keeps one scale per channel; the group
    size is refused where nothing is int8."""
    def saved(out):
        return json.loads((out / "config.json").read_text())["quantization_config"]["int8_group_size"]

    main(["quantize", "--model", str(model_dir), "--scheme", "int8", "--method", "rtn", "--out", str(tmp_path / "a")])
    assert saved(tmp_path / "a") == 64
    main(["quantize", "--model", str(model_dir), "--scheme", "int8", "--int8-group-size", "0", "--method", "rtn",
          "--out", str(tmp_path / "b")])
    assert saved(tmp_path / "b") is None
    main(["quantize", "--model", str(model_dir), "--scheme", "int4", "--group-size", "64", "--method", "rtn",
          "--out", str(tmp_path / "c")])
    assert saved(tmp_path / "c") is None
    with pytest.raises(SystemExit):
        main(["quantize", "--model", str(model_dir), "--scheme", "int4", "--int8-group-size", "32", "--out",
              str(tmp_path / "d")])
    assert "--int8-group-size 32 is for int8 layers" in capsys.readouterr().err
    qwen_05b = ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                           num_attention_heads=14, num_key_value_heads=2)
    assert [default_int8_group_size(c) for c in (qwen_05b, small_config(), small_config(intermediate_size=160),
                                                  small_config(hidden_size=120, num_attention_heads=4))] \
        == [128, 64, 32, None]


def test_quantizing_twice_is_refused(model_dir, tmp_path):
    out = quantize_checkpoint(model_dir, tmp_path / "q", "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(out, tmp_path / "again", "int4")


@pytest.fixture
def quantized_dir(model_dir, tmp_path):
    return quantize_checkpoint(model_dir, tmp_path / "q", "int4", 64)


def _rewrite_tensors(directory, change):
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _rewrite_config(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config["quantization_config"])
    (directory / "config.json").write_text(json.dumps(config))


def test_missing_tensor_is_named(quantized_dir):
    _rewrite_tensors(quantized_dir, lambda t: t.pop("model.layers.1.mlp.down_proj.zeros"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.down_proj.zeros'"):
        qwen25.from_pretrained(quantized_dir)


def test_wrong_dtype_is_named(quantized_dir):
    def to_float(t):
        t["model.layers.0.self_attn.o_proj.qweight"] = t["model.layers.0.self_attn.o_proj.qweight"].float()
    _rewrite_tensors(quantized_dir, to_float)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.self_attn.o_proj.qweight' "
                                              r"has dtype F32, a qwen25-int4 model stores it as torch.uint8"):
        qwen25.from_pretrained(quantized_dir)


def test_wrong_shape_is_named(quantized_dir):
    def shrink(t):
        t["model.layers.0.mlp.gate_up_proj.scales"] = t["model.layers.0.mlp.gate_up_proj.scales"][:, :1].clone()
    _rewrite_tensors(quantized_dir, shrink)
    with pytest.raises(CheckpointError, match="'model.layers.0.mlp.gate_up_proj.scales' has shape"):
        qwen25.from_pretrained(quantized_dir)


def test_non_finite_scales_are_named(quantized_dir):
    def poison(t):
        t["model.layers.0.self_attn.qkv_proj.scales"][0, 0] = float("nan")
    _rewrite_tensors(quantized_dir, poison)
    with pytest.raises(CheckpointError, match="qkv_proj.scales' has non-finite values"):
        qwen25.from_pretrained(quantized_dir)


def test_truncated_weights_are_a_clear_error(quantized_dir):
    path = quantized_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        qwen25.from_pretrained(quantized_dir)


@pytest.mark.parametrize("change,message", [
    (lambda q: q.update(quant_method="gptq"), "quant_method' is 'gptq'"),
    (lambda q: q.update(group_size=48), "group size must be one of"),
    (lambda q: q.update(bits=8), "'quantization_config.bits' is 8"),
    (lambda q: q.update(lm_head="fp8"), "lm_head must be"),
    (lambda q: q.update(int8_group_size=48), "int8_group_size must be one of"),
])
def test_bad_quantization_config_is_named(quantized_dir, change, message):
    _rewrite_config(quantized_dir, change)
    with pytest.raises(ConfigError, match=message) as error:
        qwen25.from_pretrained(quantized_dir)
    assert "config.json" in str(error.value)


def test_group_size_mismatch_shows_as_a_shape_error(quantized_dir):
    _rewrite_config(quantized_dir, lambda q: q.update(group_size=32))
    with pytest.raises(CheckpointError, match="has shape"):
        qwen25.from_pretrained(quantized_dir)


# ---- the per-machine choice of path -------------------------------------------------------------------------

@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """An empty per-machine cache, kernels chosen by measurement, and the decode plan restored afterwards."""
    monkeypatch.setenv("QWEN25_CACHE", str(tmp_path))
    monkeypatch.setenv("QWEN25_KERNELS", "auto")
    before = kernel_plan()
    yield tmp_path
    set_kernel_plan(before)


def test_the_crossover_is_measured_once_per_machine_and_shape(measuring, monkeypatch):
    model = quantize_model(small_model(dtype="float32"), QuantizationConfig("int4", 32, lm_head="int8"))
    install_kernels(model)
    entries = json.loads(kernels.cache_file().read_text())["entries"]
    quantized = {k: v for k, v in entries.items() if "|quant=" in k}
    # one entry per shape: q/k/v 256x128 (int4), o 128x128, gate/up 384x128, down 128x192, LM head (int8)
    assert sorted(k.split("|quant=")[1] for k in quantized) == [
        "int4|g=32|shape=128x128", "int4|g=32|shape=128x192", "int4|g=32|shape=256x128", "int4|g=32|shape=384x128",
        "int8|g=0|shape=384x128"]
    assert all(k.startswith(f"{kernels.machine()}|float32|") for k in quantized)
    for layer in kernels.quantized_layers(model):
        entry = quantized[kernels.quantized_key(layer)]
        assert layer.packed_rows == entry["rows"] and 0 <= entry["rows"] <= 512
        assert "1" in entry["seconds"] and "load" in entry
    # read back, never measured again; the other modes set one row without measuring
    monkeypatch.setattr(kernels, "measure_kernel_rows", lambda *a: pytest.fail("measured again"))
    for layer in kernels.quantized_layers(model):
        layer.packed_rows = -1
    install_kernels(model)
    assert all(layer.packed_rows == quantized[kernels.quantized_key(layer)]["rows"]
               for layer in kernels.quantized_layers(model))
    install_kernels(model, "linear")
    assert {layer.packed_rows for layer in kernels.quantized_layers(model)} == {1}


def test_engine_runs_a_quantized_model_with_the_measured_choice(measuring, monkeypatch):
    """Through the Engine: the crossover measured (here forced to the packed kernel for up to 4 rows), decoding
    two prompts at once gives each prompt's own greedy tokens, as the full forward ranks them (fp32)."""
    monkeypatch.setattr(kernels, "measure_kernel_rows", lambda *a: {"rows": 4, "seconds": {1: [1.0, 2.0]}})
    model = quantize_model(small_model(dtype="float32"), QuantizationConfig("int8"))
    prompts = [[5, 17, 33, 2, 99, 250, 7, 8], [9, 4, 300]]
    engine = Engine(model, max_batch=2)
    assert {layer.packed_rows for layer in kernels.quantized_layers(model)} == {4}
    outputs = engine.generate(prompts, SamplingParams(max_new_tokens=10))
    for prompt, out in zip(prompts, outputs):
        new = out.completions[0].token_ids
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + new])).logits[0]
        assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == new


def test_kernels_command_shows_the_quantized_crossovers(measuring, model_dir, tmp_path, capsys):
    out = quantize_checkpoint(model_dir, tmp_path / "q8", "int8", lm_head="int8")
    main(["kernels", "--model", str(out)])
    printed = capsys.readouterr().out
    assert "| quantized layer |" in printed and "|float32|quant=int8|g=0|shape=384x128 |" not in printed
    assert "bfloat16|quant=int8|g=0|shape=384x128 |" in printed


# ---- the real model (slow) ----------------------------------------------------------------------------------

REAL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def real_model_quality():
    """GPTQ int8 (groups of 128, what `qwen25 quantize` picks) and int4 (groups of 32, its default), LM head
    kept, on the real 0.5B model against its unquantized self over 2,000+ held-out positions, two ways: every
    model computing in bf16 as it runs, and every model computing in fp32 (only the weights differ: the same
    bf16 weights computing in fp32 agree with bf16 compute on just 98.97% of these positions, so bf16 compute
    alone flips about 1%). Calibration computed once for both schemes, as the bench does."""
    from qwen25.inference.hub import is_cached, model_dir as cached_dir
    from qwen25.inference.quant_quality import compare, heldout_windows, predictions
    from qwen25.tokenizer import load_tokenizer

    if not is_cached(REAL):
        pytest.skip(f"{REAL} is not fetched here (`qwen25 models fetch {REAL}`)")
    tokenizer = load_tokenizer(cached_dir(REAL))
    windows = heldout_windows(tokenizer, windows=4, length=512)
    original = qwen25.load_model(REAL)
    reference, reference_fp32 = predictions(original, windows), predictions(copy.deepcopy(original).float(), windows)
    hessians = input_hessians(original, calibration_windows(tokenizer))
    results = {}
    for scheme, config in (("int8", QuantizationConfig("int8", method="gptq", int8_group_size=128)),
                           ("int4", QuantizationConfig("int4", method="gptq"))):
        quantized = quantize_model(copy.deepcopy(original), config, hessians)
        results[scheme] = compare(reference, predictions(quantized, windows))
        results[scheme + " fp32"] = compare(reference_fp32, predictions(quantized.float(), windows))
    return results


@pytest.mark.slow
@pytest.mark.heavy
def test_real_model_meets_the_issue_targets(real_model_quality):
    """Issue 12: int8 top-1 agreement >= 99% (weights compared in fp32 compute; in bf16 compute it stays above
    98%, the bf16-vs-fp32 floor being 98.97%) and perplexity within 1%; int4 perplexity within 5%
    (docs/benchmarks.md: 99.46% / 98.53%, +0.01%; int4 g32 +3.52%)."""
    int8, int8_fp32, int4 = (real_model_quality[k] for k in ("int8", "int8 fp32", "int4"))
    assert int8.positions >= 2000
    assert int8_fp32.agreement >= 0.99, int8_fp32
    assert int8.agreement >= 0.98, int8
    assert abs(int8.perplexity_change) <= 0.01, int8
    assert abs(int4.perplexity_change) <= 0.05, int4


# ---- GPTQ ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,group", [("int8", None), ("int4", 64), ("int8", 64)])
def test_gptq_moves_the_output_less_than_rounding(scheme, group):
    """On correlated inputs, GPTQ's codes (same grid) change x @ W.T less than nearest-grid-point rounding."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 256, generator=g) * 0.02
    x = torch.randn(2048, 256, generator=g) @ (torch.randn(256, 256, generator=g) * 0.2 + torch.eye(256))
    exact = x @ weight.t()
    rounded = QuantizedLinear.from_weight(weight, None, scheme, group)
    gptq = QuantizedLinear.from_weight(weight, None, scheme, group, hessian=x.t() @ x)

    def error(layer):
        return ((layer(x) - exact).norm() / exact.norm()).item()

    assert error(gptq) < 0.85 * error(rounded)
    assert (gptq.weight - weight).abs().max() <= (0.01 if scheme == "int8" else 0.05)  # still on the grid's range


def test_gptq_checkpoint_states_its_method_and_stays_closer(tmp_path):
    """The whole path: calibration text through the directory's tokenizer, Hessians from hooks, a directory
    whose config says gptq; on held-out-style input its logits are nearer the original than rounding's."""
    from qwen25.tokenizer import load_tokenizer

    path = tmp_path / "bf16"
    build_model(small_config(vocab_size=151936, dtype="float32"), seed=0).save_pretrained(path)
    load_tokenizer("qwen2.5").save(path)
    out = quantize_checkpoint(path, tmp_path / "gptq", "int4", 32, method="gptq")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["method"] == "gptq"
    rtn = qwen25.from_pretrained(quantize_checkpoint(path, tmp_path / "rtn", "int4", 32))
    base, gptq = qwen25.from_pretrained(path), qwen25.from_pretrained(out)
    ids = load_tokenizer(path).encode_ordinary("def add(a, b):\n    return a + b\n" * 4)
    with torch.inference_mode():
        expected = base(torch.tensor([ids])).logits
        errors = [((m(torch.tensor([ids])).logits - expected).norm() / expected.norm()).item() for m in (gptq, rtn)]
    assert errors[0] < errors[1]


def test_gptq_needs_hessians_from_calibration_that_fits_the_vocabulary():
    model = small_model()
    with pytest.raises(ValueError, match="input Hessians"):
        quantize_model(model, QuantizationConfig("int8", method="gptq"))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        input_hessians(model, torch.tensor([[1, 2, 5000]]))
    hessians = input_hessians(model, torch.tensor([[1, 2, 300], [4, 5, 6]]))
    assert hessians["model.layers.0.self_attn.q_proj"] is hessians["model.layers.0.self_attn.v_proj"]
    assert hessians["model.layers.1.mlp.down_proj"].shape == (192, 192) and "lm_head" in hessians
    with pytest.raises(ValueError, match="no input Hessian for model.layers.0.self_attn.o_proj"):
        quantize_model(model, QuantizationConfig("int8", method="gptq"),
                       {k: v for k, v in hessians.items() if not k.endswith("o_proj")})
