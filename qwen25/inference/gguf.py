"""GGUF files (llama.cpp, Ollama) in and out, for the dense `qwen2` architecture (Qwen2 and Qwen2.5).

In: `convert_gguf` dequantizes every tensor with the `gguf` package (F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K,
Q5_0, ...: whatever type it dequantizes) and writes a Hugging Face directory: config.json from the file's
hyperparameters, safetensors under HF names, the tokenizer (vocabulary, merges and chat template taken from
the file) and generation_config.json. Tensors are dequantized and written a block of rows at a time (the
safetensors header is computed from the GGUF's shapes first), so memory does not grow with the model.
llama.cpp stores qwen2's q/k projections as HF does (qwen2 uses NEOX-style rotary, so its converter does not
permute them as it does for llama's): the weights map one to one.

Output dtype: bfloat16 by default, as Qwen2.5 is released (half the disk and memory of float32). float32
keeps the dequantized values exactly (a block scale times its integers needs more mantissa than bf16's 8
bits, or fp16's 11), which is what parity checks use.

Out: `export_gguf` writes F32, F16, BF16 or Q8_0 GGUF with llama.cpp's names and metadata, one tensor at a
time; norms and biases stay F32 as llama.cpp keeps them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import (GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType,
                  RopeScalingType, TokenType)
from gguf import quants
from gguf.gguf_reader import ReaderTensor
from safetensors import safe_open

from qwen25.io import atomic_directory, atomic_path, atomic_write_text, refuse_overwrite
from qwen25.model.checkpoint import INDEX_FILE, SINGLE_FILE, to_hf_tensors, weight_files
from qwen25.model.config import ConfigError, ModelConfig
from qwen25.model.config import torch_dtype
from qwen25.model.qwen2 import Qwen2ForCausalLM
from qwen25.tokenizer.core import CONTROL_TOKENS, QwenTokenizer, byte_level_bpe, tokenizer_config

ARCH = "qwen2"
MAGIC = b"GGUF"
# HF name -> llama.cpp name; per-layer names are under model.layers.{i}. / blk.{i}.
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
EXPORT_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0}
_FILE_TYPES = {GGMLQuantizationType.F32: LlamaFileType.ALL_F32, GGMLQuantizationType.F16: LlamaFileType.MOSTLY_F16,
               GGMLQuantizationType.BF16: LlamaFileType.MOSTLY_BF16,
               GGMLQuantizationType.Q8_0: LlamaFileType.MOSTLY_Q8_0}
DEFAULT_SHARD_BYTES = 2 * 2**30


class GGUFError(ValueError):
    """A GGUF file that cannot be converted; the message names the file and the key or tensor at fault."""


def gguf_name(hf_key: str) -> str:
    if hf_key in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_key]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_key)
    if match is None or match.group(2) not in LAYER_NAMES:
        raise ValueError(f"tensor '{hf_key}' has no GGUF name (only dense qwen2 models convert)")
    return f"blk.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF key -> [out, in] shape for every tensor a checkpoint of `cfg` stores (no lm_head when tied)."""
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    shapes = {k: tuple(v.shape) for k, v in to_hf_tensors(model.state_dict()).items()}
    if cfg.tie_word_embeddings:
        del shapes["lm_head.weight"]
    return shapes


# ---- reading ---------------------------------------------------------------------------------------

def open_gguf(path: str | Path) -> GGUFReader:
    """A memory-mapped reader; a file that is not GGUF, or is cut short, is a GGUFError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, GGUF files with {MAGIC!r})")
    try:
        return GGUFReader(path)  # memory-maps the file; a tensor cut short fails its reshape there
    except (ValueError, IndexError, KeyError, OSError, struct.error) as e:
        raise GGUFError(f"{path}: cannot read this GGUF file of {path.stat().st_size:,} bytes ({e}); it is "
                        "probably truncated, or corrupt") from None


_REQUIRED = object()


def _field(reader: GGUFReader, key: str, path: Path, default=_REQUIRED):
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise GGUFError(f"{path}: metadata key '{key}' is missing")
        return default
    return field.contents()


def _float32(value: float) -> float:
    """GGUF stores float32; its shortest decimal is what the source config said (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def read_config(reader: GGUFReader, path: Path, dtype: str = "bfloat16") -> ModelConfig:
    arch = _field(reader, "general.architecture", path)
    if arch != ARCH:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; qwen25 converts '{ARCH}' GGUF files "
                        "(dense Qwen2 / Qwen2.5 models)")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: tensor 'token_embd.weight' (model.embed_tokens.weight) is missing")

    def key(name: str, default=_REQUIRED):
        return _field(reader, f"{ARCH}.{name}", path, default)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = key("attention.key_length", None)
    scaling_type = key("rope.scaling.type", None)
    if scaling_type in (None, "none"):
        rope_scaling = None
    elif scaling_type == "yarn":
        rope_scaling = {"rope_type": "yarn", "factor": _float32(key("rope.scaling.factor")),
                        "original_max_position_embeddings": int(key("rope.scaling.original_context_length"))}
    else:
        raise GGUFError(f"{path}: metadata '{ARCH}.rope.scaling.type' is {scaling_type!r}; qwen25 implements "
                        "'yarn' (and no scaling)")

    def token_id(name: str) -> int | None:
        value = _field(reader, f"tokenizer.ggml.{name}_token_id", path, None)
        return None if value is None else int(value)

    try:
        return ModelConfig(
            vocab_size=int(tensors["token_embd.weight"].shape[1]),  # GGUF lists dims fastest first: [hidden, vocab]
            hidden_size=hidden, intermediate_size=int(key("feed_forward_length")),
            num_hidden_layers=int(key("block_count")), num_attention_heads=heads,
            num_key_value_heads=int(key("attention.head_count_kv", heads)),
            head_dim=None if head_dim is None or int(head_dim) * heads == hidden else int(head_dim),
            max_position_embeddings=int(key("context_length")),
            rms_norm_eps=_float32(key("attention.layer_norm_rms_epsilon")),
            rope_theta=_float32(key("rope.freq_base", 10_000.0)), rope_scaling=rope_scaling,
            tie_word_embeddings="output.weight" not in tensors,
            bos_token_id=token_id("bos"), eos_token_id=token_id("eos"), pad_token_id=token_id("padding"),
            dtype=dtype)
    except ConfigError as e:
        raise GGUFError(f"{path}: the metadata gives an invalid config: {str(e).removeprefix('config: ')}") from None


def read_tokenizer(reader: GGUFReader, path: Path, model_max_length: int) -> QwenTokenizer:
    """The file's byte-level BPE: regular tokens, then the 22 Qwen2.5 control tokens, then unused padding."""
    model = _field(reader, "tokenizer.ggml.model", path)
    if model != "gpt2":
        raise GGUFError(f"{path}: metadata 'tokenizer.ggml.model' is {model!r}; qwen2 files use byte-level BPE "
                        "('gpt2')")
    pre = _field(reader, "tokenizer.ggml.pre", path, None)
    if pre not in (None, "qwen2"):
        raise GGUFError(f"{path}: metadata 'tokenizer.ggml.pre' is {pre!r}; qwen25 implements the Qwen2 split "
                        "regex ('qwen2')")
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    types = _field(reader, "tokenizer.ggml.token_type", path)
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: 'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
    regular = next((i for i, t in enumerate(types) if t != TokenType.NORMAL), len(types))
    added = [(i, tokens[i]) for i in range(regular, len(tokens)) if types[i] != TokenType.UNUSED]
    if [t for _, t in added] != list(CONTROL_TOKENS) or added[-1][0] != regular + len(CONTROL_TOKENS) - 1:
        raise GGUFError(f"{path}: after its {regular} regular tokens the tokenizer has {len(added)} added tokens "
                        f"({', '.join(t for _, t in added[:4])}{', ...' if len(added) > 4 else ''}); qwen25 "
                        f"expects the {len(CONTROL_TOKENS)} Qwen2.5 control tokens in order")
    merges = []
    for n, merge in enumerate(_field(reader, "tokenizer.ggml.merges", path)):
        pair = merge.split(" ")
        if len(pair) != 2:
            raise GGUFError(f"{path}: 'tokenizer.ggml.merges'[{n}] is {merge!r}, not two tokens separated by a space")
        merges.append((pair[0], pair[1]))
    config = tokenizer_config(model_max_length=model_max_length)
    config["chat_template"] = _field(reader, "tokenizer.chat_template", path, config["chat_template"])
    for name, key in (("eos_token", "eos"), ("pad_token", "padding")):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id", path, None)
        if token_id is not None:
            if not regular <= token_id < regular + len(CONTROL_TOKENS):
                raise GGUFError(f"{path}: 'tokenizer.ggml.{key}_token_id' is {token_id}, not a control token")
            config[name] = tokens[token_id]
    return byte_level_bpe({t: i for i, t in enumerate(tokens[:regular])}, merges, config)


def generation_config(cfg: ModelConfig, tok: QwenTokenizer) -> dict:
    """Stop ids from the file's eos. An instruct model (eos <|im_end|>) also stops at <|endoftext|>, as the
    released Qwen2.5-Instruct generation_config.json does."""
    eos = cfg.eos_token_ids
    if eos == [tok.control_ids["<|im_end|>"]]:
        eos = eos + [tok.endoftext_id]
    gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
           "eos_token_id": eos if len(eos) > 1 else (eos[0] if eos else None)}
    return {k: v for k, v in gen.items() if v is not None}


def dequantized_rows(tensor: ReaderTensor, path: Path, max_values: int = 1 << 22) -> Iterator[np.ndarray]:
    """float32 blocks of rows of the [out, in] matrix (a vector in one block), in order; each block holds
    about `max_values` values, so even a 150K-row embedding never sits in memory whole."""
    data = tensor.data
    step = max(1, max_values // int(tensor.shape[0])) if data.ndim > 1 else len(data)
    for start in range(0, len(data), step):
        try:
            values = quants.dequantize(data[start:start + step], tensor.tensor_type)
        except NotImplementedError:
            raise GGUFError(f"{path}: tensor '{tensor.name}' has type {tensor.tensor_type.name}, which the gguf "
                            "package cannot dequantize") from None
        yield values.reshape(-1, int(tensor.shape[0])) if data.ndim > 1 else values


@dataclass(frozen=True)
class _Entry:
    hf_key: str
    tensor: ReaderTensor


def _weight_plan(reader: GGUFReader, path: Path, cfg: ModelConfig) -> list[_Entry]:
    """Every tensor the config implies, found in the file with the right shape, and nothing else in the file."""
    tensors = {t.name: t for t in reader.tensors}
    expected = expected_tensors(cfg)
    names = {gguf_name(k): k for k in expected}
    unexpected = [n for n in tensors if n not in names]
    if unexpected:
        raise GGUFError(f"{path}: tensor '{unexpected[0]}'" + (f" (and {len(unexpected) - 1} more)"
                        if len(unexpected) > 1 else "") + " is not part of a dense qwen2 model")
    plan = []
    for name, hf_key in names.items():
        if name not in tensors:
            raise GGUFError(f"{path}: tensor '{name}' ({hf_key}) is missing")
        shape = tuple(reversed(tensors[name].shape.tolist()))
        if shape != expected[hf_key]:
            raise GGUFError(f"{path}: tensor '{name}' ({hf_key}) has shape {list(shape)}, the metadata implies "
                            f"{list(expected[hf_key])}")
        plan.append(_Entry(hf_key, tensors[name]))
    return plan


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _write_safetensors(file: Path, entries: list[_Entry], path: Path, dtype: torch.dtype) -> None:
    """One safetensors file written block by block: the header is known from the GGUF's shapes before any
    tensor is dequantized, so only a block of rows is ever in memory (safetensors' save_file needs all tensors)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        nbytes = entry.tensor.n_elements * itemsize
        header[entry.hf_key] = {"dtype": _SAFETENSORS_DTYPES[dtype],
                                "shape": list(reversed(entry.tensor.shape.tolist())),
                                "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the data starts 8-byte aligned
    with atomic_path(file) as tmp, tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for entry in entries:
            for values in dequantized_rows(entry.tensor, path):
                block = torch.from_numpy(values if values.flags.writeable else values.copy()).to(dtype).contiguous()
                f.write(block.view(torch.uint8).numpy())


def _write_shards(plan: list[_Entry], path: Path, directory: Path, dtype: torch.dtype, max_shard_bytes: int) -> None:
    """model.safetensors, or shards of at most `max_shard_bytes` with model.safetensors.index.json, as HF lays
    them out."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in plan:
        nbytes = entry.tensor.n_elements * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        _write_safetensors(directory / name, shard, path, dtype)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(e.tensor.n_elements for e in plan) * itemsize},
                 "weight_map": {e.hf_key: name for name, shard in zip(names, shards) for e in shard}}
        atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "bfloat16", overwrite: bool = False,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """GGUF file -> HF model directory (written to a temp directory, then renamed into place)."""
    path, out = Path(gguf_path), Path(out_dir)
    torch_dtype(dtype)  # an unknown dtype fails before any work
    refuse_overwrite(out, overwrite, "--force")
    reader = open_gguf(path)
    cfg = read_config(reader, path, dtype)
    tok = read_tokenizer(reader, path, cfg.max_position_embeddings)
    if tok.vocab_size > cfg.vocab_size:
        raise GGUFError(f"{path}: the tokenizer has {tok.vocab_size} tokens but 'token_embd.weight' only "
                        f"{cfg.vocab_size} rows")
    plan = _weight_plan(reader, path, cfg)
    with atomic_directory(out) as staging:
        _write_shards(plan, path, staging, torch_dtype(dtype), max_shard_bytes)
        tok.save(staging)
        atomic_write_text(staging / "generation_config.json", json.dumps(generation_config(cfg, tok), indent=2) + "\n")
        cfg.save(staging)
    return out


# ---- writing ---------------------------------------------------------------------------------------

def _add_hyperparameters(writer: GGUFWriter, cfg: ModelConfig) -> None:
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    if cfg.head_dim is not None:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    if cfg.rope_type == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(cfg.rope_scaling["factor"])
        writer.add_rope_scaling_orig_ctx_len(cfg.rope_scaling["original_max_position_embeddings"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def _add_tokenizer(writer: GGUFWriter, tok: QwenTokenizer, cfg: ModelConfig) -> None:
    """Tokens padded to the embedding's rows with llama.cpp's `[PAD{i}]`, their types, merges, ids, template."""
    by_id = {i: t for t, i in tok.tok.get_vocab(with_added_tokens=True).items()}
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        if i < tok.num_regular_tokens:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
        elif i in by_id:  # llama.cpp's rule: <|...|> looks like a control token, <tool_call> is user-defined
            tokens.append(by_id[i])
            looks_control = by_id[i].startswith("<|") and by_id[i].endswith("|>")
            types.append(TokenType.CONTROL if looks_control else TokenType.USER_DEFINED)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in json.loads(tok.tok.to_str())["model"]["merges"]])
    if cfg.bos_token_id is not None:
        writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(tok.eos_id)  # the tokenizer's eos, as llama.cpp's converter takes it
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(False)
    if tok.config.get("chat_template"):
        writer.add_chat_template(tok.config["chat_template"])


def _export_type(shape: tuple[int, ...], requested: GGMLQuantizationType) -> GGMLQuantizationType:
    """Vectors stay F32; a block type falls back to F16 for rows that are not a whole number of blocks."""
    if len(shape) == 1:
        return GGMLQuantizationType.F32
    if shape[-1] % GGML_QUANT_SIZES[requested][0]:
        return GGMLQuantizationType.F16
    return requested


def export_gguf(model_dir: str | Path, out_file: str | Path, tensor_type: str = "f16") -> Path:
    """HF model directory (with its tokenizer) -> one GGUF file that llama.cpp and `convert_gguf` read."""
    directory, out = Path(model_dir), Path(out_file)
    if tensor_type not in EXPORT_TYPES:
        raise ValueError(f"unknown GGUF type {tensor_type!r}; expected one of {list(EXPORT_TYPES)}")
    requested = EXPORT_TYPES[tensor_type]
    cfg = ModelConfig.from_file(directory)
    if cfg.is_moe:
        raise ValueError(f"{directory / 'config.json'}: a mixture-of-experts model; GGUF export covers dense qwen2")
    tok = QwenTokenizer.from_dir(directory)
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                         f"vocab_size {cfg.vocab_size}")
    files = weight_files(directory)
    shapes = expected_tensors(cfg)
    missing = [k for k in shapes if k not in files]
    if missing:
        raise ValueError(f"{directory}: missing tensor '{missing[0]}'")

    with atomic_path(out) as tmp:
        writer = GGUFWriter(tmp, ARCH)
        writer.add_name(directory.resolve().name)
        writer.add_file_type(_FILE_TYPES[requested])
        writer.add_quantization_version(GGML_QUANT_VERSION)
        _add_hyperparameters(writer, cfg)
        _add_tokenizer(writer, tok, cfg)
        plan = []
        for hf_key, shape in shapes.items():
            qtype = _export_type(shape, requested)
            block, type_size = GGML_QUANT_SIZES[qtype]
            writer.add_tensor_info(gguf_name(hf_key), shape, np.dtype(np.float32), int(np.prod(shape)) // block *
                                   type_size, raw_dtype=qtype)
            plan.append((hf_key, qtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handles = {path: safe_open(str(path), framework="pt") for path in set(files.values())}
        for hf_key, qtype in plan:  # one tensor in memory at a time
            values = handles[files[hf_key]].get_tensor(hf_key).float().numpy()
            writer.write_tensor_data(quants.quantize(values, qtype))
        writer.close()
    return out
