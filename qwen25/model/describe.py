"""`qwen25 info`: what a preset or a model directory holds: parameter counts (from the weights' own shapes
when the directory has weights, else from config.json, and it says which) and the architecture."""

from __future__ import annotations

from pathlib import Path

from qwen25.model.checkpoint import _open, weight_files
from qwen25.model.config import ModelConfig
from qwen25.model.moe import count_activated_parameters
from qwen25.model.presets import get_preset
from qwen25.model.qwen2 import build_model, count_parameters


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _weights_total(directory: Path) -> int | None:
    """Parameters in the directory's safetensors, by their shapes (no data read); None without weights."""
    try:
        files = weight_files(directory)
    except ValueError:
        return None
    total = 0
    for path in set(files.values()):
        handle = _open(path)
        for key in handle.keys():
            shape = handle.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def describe_model(name_or_dir: str) -> str:
    path = Path(name_or_dir)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: expected a model directory (with config.json) or a preset name")
        cfg = ModelConfig.from_file(path)
    else:
        try:
            cfg, _ = get_preset(name_or_dir)
        except KeyError as e:
            raise ValueError(f"{name_or_dir!r} is neither a model directory nor a preset: {e.args[0]}") from None
    model = build_model(cfg, device="meta")
    total, non_embedding = count_parameters(model)
    lines = [name_or_dir]
    if path.exists():
        on_disk = _weights_total(path)
        tied_extra = cfg.vocab_size * cfg.hidden_size if cfg.tie_word_embeddings else 0
        quantized = cfg.extra.get("quantization_config")
        if on_disk is None:
            lines.append("  (no weights in this directory: counted from config.json only)")
        elif isinstance(quantized, dict):  # `qwen25 quantize`: codes and scales, not one element per parameter
            lines.append(f"  (quantized, {quantized.get('quant_method')}: counted from config.json)")
        elif on_disk in (total, total + tied_extra):
            lines.append("  (counted from the weights' shapes, which agree with config.json)")
        else:
            lines.append(f"  warning: the weights hold {on_disk:,} parameters but config.json implies {total:,} "
                         "(loading will report the mismatching tensor)")
    lines += [f"  total parameters:         {total:>15,} ({_human(total)})",
              f"  non-embedding parameters: {non_embedding:>15,} ({_human(non_embedding)})"]
    if cfg.is_moe:
        activated = count_activated_parameters(model)
        lines.append(f"  activated parameters:     {activated:>15,} ({_human(activated)}) per token")
    lines.append(f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
                 f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.kv_head_dim}, "
                 f"vocab {cfg.vocab_size}, tied embeddings {'yes' if cfg.tie_word_embeddings else 'no'}")
    lines.append(f"  max positions {cfg.max_position_embeddings}, rope_theta {cfg.rope_theta:g}, "
                 f"rms_norm_eps {cfg.rms_norm_eps:g}, eos {cfg.eos_token_id}, dtype {cfg.dtype}")
    if cfg.is_moe:
        sparse = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        lines.append(f"  experts {cfg.num_experts}, {cfg.num_experts_per_tok} per token, moe intermediate "
                     f"{cfg.moe_intermediate_size}, shared expert intermediate {cfg.shared_expert_intermediate_size}, "
                     f"norm_topk_prob {str(cfg.norm_topk_prob).lower()}, {sparse}/{cfg.num_hidden_layers} layers "
                     f"sparse, aux loss coef {cfg.router_aux_loss_coef:g}")
    return "\n".join(lines)
