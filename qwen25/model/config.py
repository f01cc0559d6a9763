"""Model configuration: one dataclass for every Qwen2.5 model, read from and written to HF `config.json`.

Field names are the Hugging Face names, so a config dict maps onto the dataclass with no renaming. RoPE
settings are normalised to `rope_theta` plus an optional `rope_scaling` dict whatever form the file used
(transformers 4.x `rope_theta`/`rope_scaling`, or 5.x `rope_parameters`). A config with `num_experts > 0` is a
Qwen2-MoE model (`model_type: "qwen2_moe"`); the MoE fields' defaults mean "dense" (`model_type: "qwen2"`).
`dual_chunk_attention_config` is kept exactly as Qwen2.5-1M publishes it (so it round-trips unchanged) and read through `DualChunkConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from qwen25.io import atomic_write_text

SUPPORTED_ROPE_TYPES = ("default", "yarn")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")

# Keys that every writer regenerates; everything else unknown is carried through `extra` untouched.
_REGENERATED_KEYS = {"architectures", "model_type", "rope_parameters", "torch_dtype", "dtype", "transformers_version",
                     "layer_types", "use_cache"}


class ConfigError(ValueError):
    """An impossible or unsupported configuration; the message names the field and the source."""


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads, as transformers derives it
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "yarn", "factor": 4.0, ...}; None = plain RoPE
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = None
    dtype: str = "bfloat16"  # the dtype the weights are meant to be stored and run in
    # Mixture of experts (Qwen1.5-MoE / Qwen2-MoE, SPEC §2). num_experts 0 = a dense model.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    router_aux_loss_coef: float = 0.001
    dual_chunk_attention_config: dict[str, Any] | None = None  # Qwen2.5-1M's block, verbatim; see DualChunkConfig
    extra: dict[str, Any] = field(default_factory=dict)  # unknown config.json keys, written back on save

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """transformers' rule: sparse unless listed in mlp_only_layers or off the decoder_sparse_step grid."""
        return (self.is_moe and layer_idx not in self.mlp_only_layers
                and (layer_idx + 1) % self.decoder_sparse_step == 0)

    @property
    def dual_chunk(self) -> DualChunkConfig | None:
        """`dual_chunk_attention_config` parsed, with vLLM's defaults filled in; None when absent."""
        if self.dual_chunk_attention_config is None:
            return None
        return DualChunkConfig.parse(self.dual_chunk_attention_config, self.num_hidden_layers,
                                     self.num_attention_heads)

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    def validate(self, source: str = "config") -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"{source}: field '{name}' {why}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, f"must be a positive integer, got {value!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"({self.hidden_size}) is not divisible by num_attention_heads "
                 f"({self.num_attention_heads}) and no head_dim is given")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
            fail("head_dim", f"must be a positive integer, got {self.head_dim!r}")
        if self.kv_head_dim % 2:
            fail("head_dim", f"must be even for rotary embeddings, got {self.kv_head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_attention_heads", f"({self.num_attention_heads}) is not divisible by "
                 f"num_key_value_heads ({self.num_key_value_heads})")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range", "router_aux_loss_coef"):
            value = getattr(self, name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                fail(name, f"must be a number, got {value!r}")
        if not self.rms_norm_eps > 0:
            fail("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 1:
            fail("rope_theta", f"must be > 1, got {self.rope_theta!r}")
        if self.hidden_act != "silu":
            fail("hidden_act", f"must be 'silu' (the only activation Qwen2 uses), got {self.hidden_act!r}")
        if self.use_sliding_window:
            fail("use_sliding_window", "is true, but no Qwen2.5 model uses sliding-window attention and "
                 "qwen25 does not implement it")
        if self.dtype not in SUPPORTED_DTYPES:
            fail("dtype", f"must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type not in SUPPORTED_ROPE_TYPES:
                fail("rope_scaling.rope_type", f"must be one of {SUPPORTED_ROPE_TYPES}, got {rope_type!r}")
            if rope_type == "yarn":
                factor = self.rope_scaling.get("factor")
                if not isinstance(factor, (int, float)) or factor < 1:
                    fail("rope_scaling.factor", f"must be a number >= 1 for yarn, got {factor!r}")
                if "original_max_position_embeddings" not in self.rope_scaling:
                    fail("rope_scaling.original_max_position_embeddings", "is required for yarn")
        if self.dual_chunk_attention_config is not None:
            DualChunkConfig.parse(self.dual_chunk_attention_config, self.num_hidden_layers,
                                  self.num_attention_heads, source)
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                fail(name, f"({value}) is outside the vocabulary of {self.vocab_size}")
        eos = self.eos_token_ids
        if any(not 0 <= e < self.vocab_size for e in eos):
            fail("eos_token_id", f"({self.eos_token_id}) is outside the vocabulary of {self.vocab_size}")
        self._validate_moe(fail)

    def _validate_moe(self, fail) -> None:
        def positive_int(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        if not isinstance(self.num_experts, int) or isinstance(self.num_experts, bool) or self.num_experts < 0:
            fail("num_experts", f"must be a non-negative integer (0 = dense), got {self.num_experts!r}")
        if not positive_int("decoder_sparse_step"):
            fail("decoder_sparse_step", f"must be a positive integer, got {self.decoder_sparse_step!r}")
        if not isinstance(self.mlp_only_layers, list) or any(
                not isinstance(i, int) or not 0 <= i < self.num_hidden_layers for i in self.mlp_only_layers):
            fail("mlp_only_layers", f"must be a list of layer indices in [0, {self.num_hidden_layers}), "
                 f"got {self.mlp_only_layers!r}")
        if not self.is_moe:
            return
        for name in ("num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"):
            if not positive_int(name):
                fail(name, f"must be a positive integer when num_experts > 0, got {getattr(self, name)!r}")
        if self.num_experts_per_tok > self.num_experts:
            fail("num_experts_per_tok", f"({self.num_experts_per_tok}) is larger than num_experts "
                 f"({self.num_experts})")
        if not isinstance(self.norm_topk_prob, bool):
            fail("norm_topk_prob", f"must be true or false, got {self.norm_topk_prob!r}")
        if not isinstance(self.router_aux_loss_coef, (int, float)) or not self.router_aux_loss_coef >= 0:
            fail("router_aux_loss_coef", f"must be a number >= 0, got {self.router_aux_loss_coef!r}")

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face config.json ------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        raw = dict(raw)
        model_type = raw.pop("model_type", None)
        if model_type not in ("qwen2", "qwen2_moe", None):
            raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; this loader reads 'qwen2' and "
                              "'qwen2_moe'")
        _check_model_type(raw, model_type, source)
        theta, scaling = _normalise_rope(raw, source)
        dtype = raw.pop("dtype", None) or raw.pop("torch_dtype", None) or "bfloat16"
        raw.pop("torch_dtype", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "rope_theta", "rope_scaling", "dtype"}
        known = {k: raw.pop(k) for k in list(raw) if k in names}
        if known.get("num_key_value_heads") is None and "num_attention_heads" in known:
            known["num_key_value_heads"] = known["num_attention_heads"]
        if "mlp_only_layers" in known and known["mlp_only_layers"] is None:
            known["mlp_only_layers"] = []  # transformers' Qwen2MoeConfig allows null for "none"
        missing = [n for n in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if n not in known]
        if missing:
            raise ConfigError(f"{source}: required field '{missing[0]}' is missing")
        layer_types = raw.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise ConfigError(f"{source}: field 'layer_types' lists {sorted(set(layer_types))}; qwen25 implements "
                              "only 'full_attention' (no Qwen2.5 model uses sliding windows)")
        extra = {k: v for k, v in raw.items() if k not in _REGENERATED_KEYS}
        try:
            cfg = cls(**known, rope_theta=theta, rope_scaling=scaling, dtype=dtype, extra=extra)
        except ConfigError as e:
            raise ConfigError(str(e).replace("config:", f"{source}:", 1)) from None
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers/vLLM form: legacy `rope_theta` + `rope_scaling`, which every version reads."""
        out: dict[str, Any] = ({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe"} if self.is_moe
                               else {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
        for f in dataclasses.fields(self):
            if f.name in ("extra", "dtype", "rope_scaling") or (f.name in _MOE_FIELDS and not self.is_moe):
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("head_dim", "sliding_window", "max_window_layers",
                                            "dual_chunk_attention_config"):
                continue  # transformers' strict config rejects null here; absent means "derive" or "unused"
            out[f.name] = value
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        if out["rope_scaling"] is not None:
            out["rope_scaling"]["type"] = out["rope_scaling"]["rope_type"]  # older readers look for "type"
        out["torch_dtype"] = self.dtype
        out["use_cache"] = True
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no config.json here (is this a Hugging Face model directory?)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return cls.from_hf_dict(raw, source=str(path))

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_hf_dict(), indent=2) + "\n")


_MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
               "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef")


def _check_model_type(raw: dict[str, Any], model_type: str | None, source: str) -> None:
    """`model_type` and the MoE fields must agree; a qwen2_moe file must say how big its experts are."""
    if model_type == "qwen2_moe":
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"):
            if name not in raw:
                raise ConfigError(f"{source}: required field '{name}' is missing (model_type is 'qwen2_moe')")
        if not raw["num_experts"]:
            raise ConfigError(f"{source}: field 'num_experts' is {raw['num_experts']!r}; a 'qwen2_moe' model "
                              "needs at least one expert")
        if raw.get("qkv_bias", True) is not True:
            raise ConfigError(f"{source}: field 'qkv_bias' is {raw['qkv_bias']!r}; Qwen2 attention always has "
                              "q/k/v bias and qwen25 implements only that")
    elif raw.get("num_experts"):
        raise ConfigError(f"{source}: field 'num_experts' is {raw['num_experts']!r} but model_type is "
                          f"{model_type!r}; a mixture-of-experts config has model_type 'qwen2_moe'")


def _normalise_rope(raw: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """Pop every RoPE key from `raw` and return (rope_theta, rope_scaling-or-None)."""
    params = raw.pop("rope_parameters", None)
    legacy_scaling = raw.pop("rope_scaling", None)
    legacy_theta = raw.pop("rope_theta", None)
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{source}: field 'rope_parameters' must be an object, got {params!r}")
    if legacy_scaling is not None and not isinstance(legacy_scaling, dict):
        raise ConfigError(f"{source}: field 'rope_scaling' must be an object or null, got {legacy_scaling!r}")
    merged: dict[str, Any] = {}
    merged.update(legacy_scaling or {})
    merged.update(params or {})
    theta = merged.pop("rope_theta", None) or legacy_theta or 10_000.0  # transformers' default_theta
    rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    if rope_type == "default":
        return float(theta), None
    return float(theta), {"rope_type": rope_type, **merged}


class SparseHeadPattern(NamedTuple):
    """One head's sparse-prefill budget, as MInference's per-head JSON lists it (the score is not kept).

    "vertical_and_slash": `vertical` key columns and `slash` diagonals, chosen per prompt from the last queries.
    "stream_llm" (A-shape): the first `vertical` tokens (sinks) and a local window of `slash` tokens.
    """

    kind: str
    vertical: int
    slash: int


SPARSE_KINDS = ("vertical_and_slash", "stream_llm")


def parse_sparse_patterns(raw: Any, num_layers: int, num_heads: int,
                          where: str = "sparse_attention_config") -> tuple[tuple[SparseHeadPattern, ...], ...]:
    """MInference's format: a list with one object per layer, `{"<head>": [kind, vertical, slash, score]}`.

    Every layer and head must be present. Raises ValueError("'<where>[layer][\"head\"]' <what is wrong>").
    """
    def fail(loc: str, why: str) -> None:
        raise ValueError(f"'{where}{loc}' {why}")

    if not isinstance(raw, list):
        fail("", f"must be a list with one object per layer, got {type(raw).__name__}")
    if len(raw) != num_layers:
        fail("", f"lists {len(raw)} layers, but the model has {num_layers}")
    layers = []
    for layer, heads in enumerate(raw):
        if not isinstance(heads, dict):
            fail(f"[{layer}]", "must be an object mapping head index to a pattern")
        extra = set(heads) - {str(h) for h in range(num_heads)}
        if extra:
            fail(f"[{layer}]", f"has heads {sorted(extra)}; the model has heads 0..{num_heads - 1}")
        patterns = []
        for head in range(num_heads):
            loc, entry = f'[{layer}]["{head}"]', heads.get(str(head))
            if entry is None:
                fail(loc, "is missing; every head needs a pattern")
            if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4):
                fail(loc, f"must be [kind, vertical, slash, score], got {entry!r}")
            kind, vertical, slash = entry[:3]
            if kind not in SPARSE_KINDS:
                fail(loc, f"has kind {kind!r}; supported kinds are {SPARSE_KINDS}")
            for name, value in (("vertical", vertical), ("slash", slash)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    fail(loc, f"needs a positive integer {name} size, got {value!r}")
            patterns.append(SparseHeadPattern(kind, vertical, slash))
        layers.append(tuple(patterns))
    return tuple(layers)


@dataclass(frozen=True)
class DualChunkConfig:
    """Qwen2.5-1M's `dual_chunk_attention_config`, with the defaults vLLM applies to missing keys.

    chunk_size c and local_size w give chunks of L = c - w tokens (SPEC §5). A positive
    original_max_position_embeddings turns on the length-based logit scaling beyond it. The sparse_* keys
    describe sparse prefill (MInference vertical-slash) inside DCA, used for prompts longer than the threshold.
    """

    chunk_size: int = 8192
    local_size: int = 1024
    original_max_position_embeddings: int = 0
    sparse_attention_config: tuple[tuple[SparseHeadPattern, ...], ...] | None = None
    sparse_attention_enabled: bool = False
    sparse_attention_threshold: int = 32768
    sparse_attention_last_q: int = 64

    @property
    def chunk_len(self) -> int:
        return self.chunk_size - self.local_size

    @classmethod
    def parse(cls, raw: Any, num_layers: int, num_heads: int, source: str = "config") -> DualChunkConfig:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"{source}: field 'dual_chunk_attention_config{name}' {why}")

        if not isinstance(raw, dict):
            fail("", f"must be an object, got {raw!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            fail(f".{unknown[0]}", f"is not a setting qwen25 knows; expected some of {sorted(known)}")
        values = dict(raw)
        for name in ("chunk_size", "local_size", "original_max_position_embeddings", "sparse_attention_threshold",
                     "sparse_attention_last_q"):
            value = values.get(name, getattr(cls, name))
            low = 1 if name in ("chunk_size", "sparse_attention_last_q") else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                fail(f".{name}", f"must be an integer >= {low}, got {value!r}")
        chunk, local = values.get("chunk_size", cls.chunk_size), values.get("local_size", cls.local_size)
        if local >= chunk:
            fail(".local_size", f"({local}) must be smaller than chunk_size ({chunk})")
        patterns = values.get("sparse_attention_config")
        if patterns is not None:
            try:
                values["sparse_attention_config"] = parse_sparse_patterns(
                    patterns, num_layers, num_heads, "dual_chunk_attention_config.sparse_attention_config")
            except ValueError as e:
                raise ConfigError(f"{source}: field {e}") from None
        enabled = values.setdefault("sparse_attention_enabled", patterns is not None)
        if not isinstance(enabled, bool):
            fail(".sparse_attention_enabled", f"must be true or false, got {enabled!r}")
        return cls(**values)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {list(_DTYPES)}")
    return _DTYPES[name]
