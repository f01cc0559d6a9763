"""Weight-only int8 / int4 quantization of a Qwen2.5 model for CPU inference, and its checkpoint directories.

What is quantized: the decoder's linear layers. q/k/v run as one matrix (`self_attn.qkv_proj`) and gate/up as
one (`mlp.gate_up_proj`), as the bf16 model fuses them at inference: each output row is quantized on its own,
so quantizing the stacked matrix is the same as quantizing each layer, and one kernel call replaces three.
o_proj and down_proj stay single. Embeddings and norms keep the model's dtype, and so does the LM head unless
`lm_head` says otherwise (see docs/benchmarks.md for what quantizing it buys).

int8 is per output channel (one scale per row: PyTorch's packed int8 kernel) unless `int8_group_size` asks
for groups (a scale and a zero per group of input columns, run as two int4 matrices, see `quant_kernels`):
finer, and on a 2-core EPYC as fast to decode, so `qwen25 quantize` and `serve --quantize` pick groups.

The directory: config.json with a `quantization_config` block (`quant_method: "qwen25-int8"` or
`"qwen25-int4"`, bits, group sizes, LM head), safetensors holding each quantized layer's portable tensors
(`qweight`, `scales`, grouped `zeros`, `bias`), generation_config.json and the tokenizer files copied.
`load_quantized` (reached through `qwen25.from_pretrained` / `load_model`, so through every `--model`)
builds the model with quantized layers in place of those linears and packs the weights for this CPU.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from qwen25.inference.gptq import calibration_windows, gptq_quantize, input_hessians
from qwen25.inference.hub import resolve_model_path
from qwen25.inference.quant_kernels import (
    INT4_GROUP_SIZES,
    SCHEMES,
    check_group_size,
    dequantize_groups,
    int4_block,
    int4_dequantized_t,
    int4_kernel,
    int8_groups_dequantized_t,
    int8_groups_kernel,
    int8_kernel,
    join_int8_groups,
    pack_int4,
    pack_nibbles,
    padded_rows,
    quantize_groups,
    quantize_int8,
    scales_and_zeros,
    split_int8_groups,
    unpack_int4_t,
    unpack_nibbles,
)
from qwen25.io import atomic_directory
from qwen25.model import CheckpointError, ConfigError, ModelConfig, Qwen2ForCausalLM, torch_dtype
from qwen25.model import from_pretrained as read_checkpoint
from qwen25.model.checkpoint import load_state_dict, read_generation_config, save_pretrained, weight_files
from qwen25.tokenizer import load_tokenizer

QUANT_METHODS = {f"qwen25-{scheme}": scheme for scheme in SCHEMES}
# int4's default: on Qwen2.5-Coder-0.5B GPTQ int4 in groups of 128 raised perplexity 6.9%, in groups of 32 3.5%, at
# the same decode speed (docs/benchmarks.md)
DEFAULT_GROUP_SIZE = 32
# int8's group size where a command chooses for the user (`qwen25 quantize`, `serve --quantize`): GPTQ int8 in
# groups of 128 agreed with bf16 on 99.46% of held-out positions (fp32 compute) against 98.58% with one scale
# per channel, at the same decode speed. The API's default (None) stays per channel.
DEFAULT_INT8_GROUP_SIZE = 128
METHODS = ("rtn", "gptq")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json")


def default_int8_group_size(cfg: ModelConfig) -> int | None:
    """The int8 group size a command picks for this model: DEFAULT_INT8_GROUP_SIZE, or the largest smaller
    kernel size, that divides every quantized layer's input width; None (per channel) if none does."""
    widths = {cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.kv_head_dim}
    return next((g for g in sorted(INT4_GROUP_SIZES, reverse=True)
                 if g <= DEFAULT_INT8_GROUP_SIZE and all(w % g == 0 for w in widths)), None)


@dataclass(frozen=True)
class QuantizationConfig:
    """scheme: "int8" (per output channel, symmetric; or in groups of `int8_group_size` input columns, with
    zeros) or "int4" (groups of `group_size` input columns, with zeros). lm_head: None keeps the LM head in the
    model's dtype; "int8" or "int4" quantizes it too. method: how codes were chosen, "rtn" (each weight's
    nearest grid point) or "gptq" (against calibration text); the format is the same."""

    scheme: str
    group_size: int | None = None
    lm_head: str | None = None
    method: str = "rtn"
    int8_group_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quantization method must be one of {METHODS}, got {self.method!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"quantization scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.lm_head is not None and self.lm_head not in SCHEMES:
            raise ValueError(f"lm_head must be None (keep it) or one of {SCHEMES}, got {self.lm_head!r}")
        uses_groups = "int4" in (self.scheme, self.lm_head)
        if uses_groups and self.group_size is None:
            object.__setattr__(self, "group_size", DEFAULT_GROUP_SIZE)
        if not uses_groups and self.group_size is not None:
            raise ValueError(f"group_size is for int4; int8 quantizes whole output channels unless "
                             f"int8_group_size is set (got group_size {self.group_size})")
        if self.int8_group_size is not None:
            if self.int8_group_size not in INT4_GROUP_SIZES:  # grouped int8 runs on the int4 kernel
                raise ValueError(f"int8_group_size must be one of {INT4_GROUP_SIZES}, got {self.int8_group_size}")
            if "int8" not in (self.scheme, self.lm_head):
                raise ValueError(f"int8_group_size is for int8 layers; nothing here is int8 (scheme "
                                 f"{self.scheme!r}, lm_head {self.lm_head!r})")

    def group_size_for(self, scheme: str) -> int | None:
        return self.group_size if scheme == "int4" else self.int8_group_size

    def to_dict(self) -> dict:
        return {"quant_method": f"qwen25-{self.scheme}", "bits": 8 if self.scheme == "int8" else 4,
                "group_size": self.group_size, "int8_group_size": self.int8_group_size,
                "lm_head": self.lm_head, "method": self.method,
                "modules": ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
                + (["lm_head"] if self.lm_head else [])}

    @classmethod
    def from_dict(cls, raw: object, source: str) -> QuantizationConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: field 'quantization_config' must be an object, got {raw!r}")
        method = raw.get("quant_method")
        if method not in QUANT_METHODS:
            raise ConfigError(f"{source}: field 'quantization_config.quant_method' is {method!r}; qwen25 loads "
                              f"{', '.join(QUANT_METHODS)} (directories written by `qwen25 quantize`)")
        scheme = QUANT_METHODS[method]
        bits = raw.get("bits", 8 if scheme == "int8" else 4)
        if bits != (8 if scheme == "int8" else 4):
            raise ConfigError(f"{source}: field 'quantization_config.bits' is {bits!r}, but {method} has "
                              f"{8 if scheme == 'int8' else 4}")
        try:
            return cls(scheme, raw.get("group_size"), raw.get("lm_head"), raw.get("method", "rtn"),
                       raw.get("int8_group_size"))
        except ValueError as e:
            raise ConfigError(f"{source}: field 'quantization_config': {e}") from None


class QuantizedLinear(nn.Module):
    """y = x @ W.T + b with W held as int8 codes per output row, or int4 or int8 codes per group of input
    columns (`group_size`), for inference.

    In memory the weights are in the kernels' form (int8 [N, K] and scales [N]; int4 packed for this CPU and
    scales/zeros as [groups, N, 2]; grouped int8 as two such int4 matrices, [2, ...]); the state dict holds
    the portable form (`qweight`, `scales`, `zeros`, `bias`), so a directory written on one machine loads on
    another. Up to `packed_rows` rows of input run the
    packed kernel, more a dequantized matmul: 1 (batch-1 decode, where the kernel reads a half or a quarter of
    the bytes) until the decode kernel choice (`qwen25.inference.kernels.install_kernels`, which every Engine
    runs) sets the crossover measured on this machine.
    """

    packed_rows: int = 1

    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: str, group_size: int | None = None,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"quantization scheme must be one of {SCHEMES}, got {scheme!r}")
        if group_size is not None or scheme == "int4":
            check_group_size(in_features, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.group_size = scheme, group_size
        self.grouped_int8 = scheme == "int8" and group_size is not None
        # Buffers, so .to(device) and dtype casts reach them; not persistent, because the state dict holds the
        # portable form instead (`_save_to_state_dict`).
        if scheme == "int8" and group_size is None:
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                 persistent=False)
            self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device), persistent=False)
        else:
            rows = padded_rows(out_features)
            pair = (2,) if self.grouped_int8 else ()
            self.register_buffer("qweight", torch.empty(*pair, rows, in_features // 2, dtype=torch.uint8,
                                                        device=device), persistent=False)
            self.register_buffer("scales", torch.empty(*pair, in_features // group_size, rows, 2, dtype=dtype,
                                                       device=device), persistent=False)
        # The portable grouped codes, kept only on a CPU whose packed layout cannot be read back (`int4_block`).
        self.register_buffer("codes", None, persistent=False)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None,
                             persistent=False)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, scheme: str,
                    group_size: int | None = None, hessian: torch.Tensor | None = None) -> QuantizedLinear:
        """Quantize a [N, K] weight (and keep its bias); scales, zeros and bias take the weight's dtype. With the
        inputs' second moments `hessian` [K, K] the codes are GPTQ's (`qwen25.inference.gptq`), else each
        weight's nearest grid point."""
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, scheme, group_size, weight.dtype, weight.device)
        if hessian is not None:
            tensors = gptq_quantize(weight, hessian, scheme, group_size, weight.dtype)
        elif group_size is None:
            qweight, scales = quantize_int8(weight, weight.dtype)
            tensors = {"qweight": qweight, "scales": scales}
        else:
            codes, scales, zeros = quantize_groups(weight, group_size, weight.dtype, bits=layer.bits)
            tensors = {"codes": codes, "scales": scales, "zeros": zeros}
        if "codes" in tensors:  # grouped: int4 codes two per byte, int8 codes as they are
            codes = tensors.pop("codes")
            tensors["qweight"] = codes if layer.grouped_int8 else pack_nibbles(codes)
        if bias is not None:
            tensors["bias"] = bias.detach()
        layer.load_portable(tensors)
        return layer

    @property
    def bits(self) -> int:
        return 8 if self.scheme == "int8" else 4

    # ---- the portable form -------------------------------------------------------------------------------------

    def portable_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        n, k = self.out_features, self.in_features
        dtype = self.scales.dtype
        if self.group_size is None:
            shapes = {"qweight": ((n, k), torch.int8), "scales": ((n,), dtype)}
        else:
            groups = k // self.group_size
            shapes = {"qweight": ((n, k if self.grouped_int8 else k // 2), torch.uint8),
                      "scales": ((n, groups), dtype), "zeros": ((n, groups), dtype)}
        if self.bias is not None:
            shapes["bias"] = ((n,), dtype)
        return shapes

    def portable(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds for this layer (see the module docstring of quant_kernels)."""
        if self.qweight.is_meta:  # a layer waiting to be loaded: what it expects
            return {name: torch.empty(shape, dtype=dtype, device="meta")
                    for name, (shape, dtype) in self.portable_shapes().items()}
        n = self.out_features
        if self.group_size is None:
            out = {"qweight": self.qweight, "scales": self.scales}
        elif self.grouped_int8:  # scales: the low half's; zeros: the high half's (`split_int8_groups`)
            codes = self.codes if self.codes is not None else join_int8_groups(self.qweight, n)
            out = {"qweight": codes, "scales": self.scales[1, :, :n, 0].t().contiguous(),
                   "zeros": self.scales[0, :, :n, 1].t().contiguous()}
        else:
            codes = self.codes if self.codes is not None else pack_nibbles(unpack_int4_t(self.qweight)[:, :n].t() + 8)
            out = {"qweight": codes, "scales": self.scales[:, :n, 0].t().contiguous(),
                   "zeros": self.scales[:, :n, 1].t().contiguous()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def load_portable(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the portable tensors (shapes as `portable_shapes`) into the kernels' form."""
        shapes = self.portable_shapes()
        for name, (shape, dtype) in shapes.items():
            got = tensors.get(name)
            if got is None or tuple(got.shape) != shape or (got.dtype != dtype and not got.is_floating_point()):
                found = "nothing" if got is None else f"{got.dtype} {list(got.shape)}"
                raise ValueError(f"quantized layer tensor '{name}': expected {dtype} {list(shape)}, got {found}")
        dtype = self.scales.dtype
        if self.group_size is None:
            self.qweight = _aligned(tensors["qweight"])
            self.scales = _aligned(tensors["scales"].to(dtype))
        elif self.grouped_int8:
            self.qweight, self.scales = split_int8_groups(tensors["qweight"], tensors["scales"], tensors["zeros"],
                                                          dtype)
            self.codes = None if int4_block() is not None else tensors["qweight"].contiguous()
        else:
            codes = unpack_nibbles(tensors["qweight"])
            self.qweight = pack_int4(codes)
            self.scales = scales_and_zeros(tensors["scales"], tensors["zeros"], dtype)
            self.codes = None if int4_block() is not None else tensors["qweight"].contiguous()
        if self.bias is not None:
            self.bias = _aligned(tensors["bias"].to(dtype))

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        for name, tensor in self.portable().items():
            destination[prefix + name] = tensor

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        names = self.portable_shapes()
        missing = [prefix + name for name in names if prefix + name not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(key for key in state_dict
                               if key.startswith(prefix) and key[len(prefix):] not in names)
        if missing:
            return
        try:
            self.load_portable({name: state_dict[prefix + name] for name in names})
        except ValueError as e:
            error_msgs.append(f"{prefix.rstrip('.')}: {e}")

    # ---- computing ---------------------------------------------------------------------------------------------

    def dequantized_t(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W.T [K, N] in `dtype` (default: the scales' dtype), computed from the codes."""
        dtype = dtype or self.scales.dtype
        n = self.out_features
        if self.group_size is None:
            return (self.qweight.to(dtype) * self.scales.to(dtype)[:, None]).t()
        if self.codes is not None:
            portable = self.portable()
            codes = portable["qweight"] if self.grouped_int8 else unpack_nibbles(portable["qweight"])
            return dequantize_groups(codes, portable["scales"], portable["zeros"], dtype, self.bits).t()
        if self.grouped_int8:
            return int8_groups_dequantized_t(self.qweight, self.scales, dtype)[:, :n]
        return int4_dequantized_t(self.qweight, self.scales.to(dtype), dtype)[:, :n]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight [N, K], a new tensor each time: lets code that reads `lm_head.weight` (the
        fused loss with labels) run on a quantized LM head."""
        return self.dequantized_t().t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.scales.dtype
        flat = x.reshape(-1, self.in_features).to(dtype).contiguous()
        rows, n = flat.shape[0], self.out_features
        if flat.device.type == "cpu" and 0 < rows <= self.packed_rows:
            if self.group_size is None:
                y = int8_kernel(flat, self.qweight, self.scales)
            elif self.grouped_int8:
                y = int8_groups_kernel(flat, self.qweight, self.group_size, self.scales)
                y = y[:, :n] if y.shape[1] != n else y  # padding rows
            else:
                y = int4_kernel(flat, self.qweight, self.group_size, self.scales)
                y = y[:, :n] if y.shape[1] != n else y  # padding rows
            if self.bias is not None:
                y = y + self.bias
            y = y.contiguous()
        else:
            w_t = self.dequantized_t(dtype)
            y = flat @ w_t if self.bias is None else torch.addmm(self.bias, flat, w_t)
        return y.view(*x.shape[:-1], n).to(x.dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme}{group}")


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor at an address the packed kernels can load from: tensors read from a safetensors file
    may sit at any byte offset, and the int8 kernel crashes on them."""
    if tensor.is_contiguous() and tensor.data_ptr() % 64 == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class SplitOutputs:
    """One layer over stacked weights, its output split per part: stands where a FusedProjection stood
    (`Attention._qkv`, `MLP._gate_up`), so the model's forward is unchanged."""

    def __init__(self, layer: nn.Module, sizes: list[int]) -> None:
        self.layer = layer
        self.sizes = sizes

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.layer(x).split(self.sizes, dim=-1)


def _replace_linears(model: Qwen2ForCausalLM, config: QuantizationConfig, make) -> None:
    """Swap the decoder's linears (and the LM head if asked) for `make(linears, scheme)`, q/k/v and gate/up
    each stacked into one layer."""
    if model.config.is_moe:
        raise ValueError("quantization covers dense models; this config has MoE layers (routed experts are "
                         "stacked tensors, not linear layers)")
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        parts = (attn.q_proj, attn.k_proj, attn.v_proj)
        attn.qkv_proj = make(parts, config.scheme)
        attn._qkv = SplitOutputs(attn.qkv_proj, [p.out_features for p in parts])
        del attn.q_proj, attn.k_proj, attn.v_proj
        attn.o_proj = make((attn.o_proj,), config.scheme)
        parts = (mlp.gate_proj, mlp.up_proj)
        mlp.gate_up_proj = make(parts, config.scheme)
        mlp._gate_up = SplitOutputs(mlp.gate_up_proj, [p.out_features for p in parts])
        del mlp.gate_proj, mlp.up_proj
        mlp.down_proj = make((mlp.down_proj,), config.scheme)
    if config.lm_head is not None:
        model.lm_head = make((model.lm_head,), config.lm_head)


def quantize_model(model: Qwen2ForCausalLM, config: QuantizationConfig,
                   hessians: dict[str, torch.Tensor] | None = None) -> Qwen2ForCausalLM:
    """Quantize `model` in place (layer by layer, so memory stays near the unquantized model's) and record the
    scheme in its config. The result is for inference. GPTQ (`config.method`) needs `hessians`, the inputs'
    second moments per linear's module name (`gptq.input_hessians` on calibration text)."""
    if config.method == "gptq" and hessians is None:
        raise ValueError("GPTQ needs the layers' input Hessians (qwen25.inference.gptq.input_hessians on "
                         "calibration_windows)")
    hessians = hessians if config.method == "gptq" else {}
    names = {id(module): name for name, module in model.named_modules()}

    def quantized(linears, scheme):
        with torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears])
            has_bias = linears[0].bias is not None
            bias = torch.cat([lin.bias for lin in linears]) if has_bias else None
        hessian = hessians.get(names[id(linears[0])])
        if config.method == "gptq" and hessian is None:
            raise ValueError(f"no input Hessian for {names[id(linears[0])]}")
        return QuantizedLinear.from_weight(weight, bias, scheme, config.group_size_for(scheme), hessian)

    _replace_linears(model, config, quantized)
    model.config = model.config.replace(extra={**model.config.extra, "quantization_config": config.to_dict()})
    return model


def quantization_config(cfg: ModelConfig, source: str) -> QuantizationConfig | None:
    """The config's quantization block parsed, or None for an unquantized model."""
    raw = cfg.extra.get("quantization_config")
    return None if raw is None else QuantizationConfig.from_dict(raw, source)


def load_quantized(path: str | Path, dtype: torch.dtype | str | None = None,
                   device: str | torch.device = "cpu") -> Qwen2ForCausalLM:
    """A directory written by `quantize_checkpoint`. `dtype` (default: the config's) is the dtype of the parts
    kept unquantized and of the scales; every problem is a ConfigError or CheckpointError naming file and key."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a quantized model directory)")
    cfg = ModelConfig.from_file(directory)
    config = quantization_config(cfg, str(directory / "config.json"))
    if config is None:
        raise ConfigError(f"{directory / 'config.json'}: no 'quantization_config'; this is not a quantized model")
    dtype = torch_dtype(dtype or cfg.dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg).to(dtype)  # so every expected tensor has the dtype it is loaded in

    def empty(linears, scheme):
        has_bias = linears[0].bias is not None
        return QuantizedLinear(linears[0].in_features, sum(lin.out_features for lin in linears), has_bias, scheme,
                               config.group_size_for(scheme), dtype, "meta")

    try:
        _replace_linears(model, config, empty)
    except ValueError as e:
        raise ConfigError(f"{directory / 'config.json'}: {e}") from None
    state = load_state_dict(directory, model, dtype)  # every key present, no stranger, shapes as the config says
    files = weight_files(directory)
    for key, expected in model.state_dict().items():
        if key not in state:
            continue  # a tied LM head
        got = state[key]
        if got.dtype != expected.dtype:
            with safe_open(str(files[key]), framework="pt") as handle:
                stored = handle.get_slice(key).get_dtype()
            raise CheckpointError(f"{files[key]}: tensor '{key}' has dtype {stored}, a "
                                  f"{config.to_dict()['quant_method']} model stores it as {expected.dtype}")
        if key.endswith((".scales", ".zeros")) and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{files[key]}: tensor '{key}' has non-finite values")
    model.load_state_dict(state, strict=False, assign=True)
    if config.lm_head is None:
        model.tie_weights()
    model.generation_config = read_generation_config(directory)
    return model.to(device)


def quantize_checkpoint(model: str | Path, out: str | Path, scheme: str, group_size: int | None = None,
                        lm_head: str | None = None, overwrite: bool = False, method: str = "rtn",
                        int8_group_size: int | None = None) -> Path:
    """`qwen25 quantize`: an HF model directory (or a fetched model's name) -> a quantized directory, written
    whole or not at all. GPTQ calibrates on text encoded with the directory's own tokenizer."""
    source, out = resolve_model_path(model), Path(out)
    if group_size is not None and "int4" not in (scheme, lm_head):
        raise ValueError(f"--group-size {group_size} is for int4 (--scheme int4 or --lm-head int4); int8's groups "
                         "are --int8-group-size")
    if int8_group_size is not None and "int8" not in (scheme, lm_head):
        raise ValueError(f"--int8-group-size {int8_group_size} is for int8 layers (--scheme int8 or --lm-head int8)")
    config = QuantizationConfig(scheme, group_size, lm_head, method, int8_group_size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out}: already exists and is not empty; choose a new directory or replace it with --force")
    if quantization_config(ModelConfig.from_file(source), str(source / "config.json")) is not None:
        raise ValueError(f"{source}: already quantized; quantize the unquantized model instead")
    calibration = calibration_windows(load_tokenizer(source)) if method == "gptq" else None
    original = read_checkpoint(source)
    try:
        hessians = None if calibration is None else input_hessians(original, calibration)
        quantized = quantize_model(original, config, hessians)
    except ValueError as e:  # a group size that does not divide a layer, an MoE model
        raise ValueError(f"{source}: {e}") from None
    with atomic_directory(out) as staging:
        save_pretrained(quantized, staging)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
    return out
