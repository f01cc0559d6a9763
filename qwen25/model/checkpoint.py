"""Hugging Face checkpoint directories: config.json, generation_config.json and safetensors (one file, or
shards with model.safetensors.index.json).

Keys are the model's own parameter names, so there is no mapping layer, with one exception: MoE layers keep
their routed experts stacked input-major in memory (`mlp.experts.gate_up` [E, H, 2I], `mlp.experts.down`
[E, I, H]) while HF checkpoints hold one [out, in] matrix per expert (`mlp.experts.{e}.gate_proj.weight`
[I, H], `up_proj` [I, H], `down_proj` [H, I]); `to_hf_tensors` and `from_hf_tensors` convert between the
two. Every problem with a checkpoint is reported as a `CheckpointError` naming the file and
the HF key; every file is written atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from qwen25.io import atomic_path, atomic_write_text
from qwen25.model.config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters wrote into state dicts; they carry nothing we do not recompute.
_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_STACKED_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up|down)$")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is; the message names the file and key."""


def weight_files(directory: Path) -> dict[str, Path]:
    """Map each tensor key to the safetensors file that holds it (from the index, or the single file)."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index (needs a 'weight_map' object): {e}") from None
        return {key: directory / name for key, name in weight_map.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        return {key: single for key in _open(single).keys()}
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (found: {', '.join(found) or 'nothing'})")


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path}: file listed in the checkpoint does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, it may be truncated or corrupt ({e})") from None


def to_hf_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state dict with stacked experts split into the per-expert HF keys (views, not copies)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _STACKED_EXPERTS.match(key)
        if match is None:
            out[key] = value
            continue
        prefix, name = match.groups()
        for e, weight in enumerate(value):
            if name == "gate_up":
                gate, up = weight.chunk(2, dim=1)
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate.T, up.T
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = weight.T
    return out


def from_hf_tensors(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf_tensors` for `model`'s keys: per-expert tensors stacked (and removed from
    `tensors` as they are used, so the weights are not held twice)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        match = _STACKED_EXPERTS.match(key)
        if match is None:
            if key in tensors:  # a tied lm_head may be absent
                state[key] = tensors.pop(key)
            continue
        prefix, name = match.groups()
        if name == "gate_up":
            state[key] = torch.stack([torch.cat([tensors.pop(f"{prefix}.{e}.gate_proj.weight").T,
                                                 tensors.pop(f"{prefix}.{e}.up_proj.weight").T], dim=1)
                                      for e in range(value.shape[0])])
        else:
            state[key] = torch.stack([tensors.pop(f"{prefix}.{e}.down_proj.weight").T for e in range(value.shape[0])])
    return state


def load_state_dict(directory: str | Path, model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read and check every tensor `model` expects: no missing, unexpected or mis-shaped keys."""
    directory = Path(directory)
    files = weight_files(directory)
    expected = {k: tuple(v.shape) for k, v in to_hf_tensors(model.state_dict()).items()}  # views, no copies
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        expected.pop("lm_head.weight", None)  # tied checkpoints may omit it; if present it is ignored
    unexpected = [k for k in files if k not in expected and not _IGNORABLE.search(k)
                  and not (tied and k == "lm_head.weight")]
    if unexpected:
        raise CheckpointError(f"{files[unexpected[0]]}: unexpected tensor '{unexpected[0]}'"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                              + " is not a parameter of this model")
    missing = [k for k in expected if k not in files]
    if missing:
        raise CheckpointError(f"{directory}: missing tensor '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                              + f"; the checkpoint's files ({', '.join(sorted({p.name for p in files.values()}))}) "
                              "do not contain it")
    by_file: dict[Path, list[str]] = {}
    for key in expected:
        by_file.setdefault(files[key], []).append(key)
    state: dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        handle = _open(path)
        present = set(handle.keys())
        for key in keys:
            if key not in present:
                raise CheckpointError(f"{path}: tensor '{key}' is listed in {INDEX_FILE} but not in this file")
            shape = tuple(handle.get_slice(key).get_shape())
            if shape != expected[key]:
                raise CheckpointError(f"{path}: tensor '{key}' has shape {list(shape)}, the config implies "
                                      f"{list(expected[key])}")
            try:
                tensor = handle.get_tensor(key)
                # integer tensors are quantized codes (qwen25.inference.quantize): they keep their dtype
                state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
            except (SafetensorError, RuntimeError) as e:
                raise CheckpointError(f"{path}: cannot read tensor '{key}', the file may be truncated ({e})") from None
    return from_hf_tensors(state, model)


def read_generation_config(directory: Path) -> dict:
    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def default_generation_config(cfg: ModelConfig) -> dict:
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    if cfg.pad_token_id is not None:
        gen["pad_token_id"] = cfg.pad_token_id
    return {k: v for k, v in gen.items() if v is not None}


def save_pretrained(model: torch.nn.Module, directory: str | Path, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Write an HF directory that transformers and vLLM load unchanged. Each file is written atomically;
    weights first and config.json last, so a directory with a config always has complete weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in to_hf_tensors(model.state_dict()).items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{directory}: tensor '{key}' has non-finite values (NaN/Inf); refusing to write it")
        tensor = (tensor.to(dtype) if dtype is not None else tensor).contiguous().cpu()
        if tensor.untyped_storage().nbytes() != tensor.nbytes:  # a view into a fused or stacked matrix: own copy
            tensor = tensor.clone()
        state[key] = tensor
    saved_dtype = next(iter(state.values())).dtype

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes

    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        with atomic_path(directory / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
        atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    elif (directory / INDEX_FILE).exists():
        os.remove(directory / INDEX_FILE)
    for stale in directory.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()

    gen = model.generation_config or default_generation_config(model.config)
    atomic_write_text(directory / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    model.config.replace(dtype=_DTYPE_NAMES[saved_dtype]).save(directory)
