"""Choose how a loaded model handles long inputs: its RoPE variant and its attention.

Defaults follow config.json, as the released Qwen checkpoints expect: a `rope_scaling` yarn block gives
static YaRN (transformers' behaviour) and a `dual_chunk_attention_config` gives dual chunk attention, with
sparse prefill inside it when that block enables it (vLLM's behaviour). Everything else is a per-run choice
that leaves config.json alone.

Importing this module registers the long-context attention backends with the model package
(`qwen25.model.attention.register_backend`), which itself knows only dense SDPA.
"""

from __future__ import annotations

from typing import Any

import torch

from qwen25.longctx.chunked import ChunkedAttention
from qwen25.longctx.dca import DualChunkAttention
from qwen25.longctx.sparse import SparseAttention, SparseConfig
from qwen25.model.attention import make_backend, register_backend
from qwen25.model.config import DualChunkConfig

ROPE_CHOICES = ("config", "plain", "yarn", "dynamic-yarn")
ATTENTION_CHOICES = ("config", "dense", "chunked", "dca", "sparse")


def configure(model: torch.nn.Module, rope: str = "config", attention: str = "config",
              yarn: dict[str, Any] | None = None, dual_chunk: DualChunkConfig | None = None,
              sparse: SparseConfig | None = None) -> None:
    """Set the model's RoPE and attention for long inputs.

    rope: "config" (what config.json says), "plain" (no scaling), "yarn" (static: one factor for every
      request, exactly as transformers), "dynamic-yarn" (factor max(1, prompt / original) per request, fixed
      at prefill, so prompts within the original length run plain RoPE). `yarn` overrides or supplies the
      block's keys (factor, original_max_position_embeddings, beta_fast, ...).
    attention: "config" (dual chunk if config.json has it, else dense), "dense" (SDPA), "chunked" (dense,
      mask-free for prompts fed in chunks), "dca" (`dual_chunk` or config.json's block), "sparse" (MInference
      sparse prefill with `sparse` or the default pattern).
    """
    cfg = model.config
    if rope not in ROPE_CHOICES:
        raise ValueError(f"rope must be one of {ROPE_CHOICES}, got {rope!r}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    scaling = cfg.rope_scaling
    if rope == "plain":
        scaling = None
    elif rope in ("yarn", "dynamic-yarn"):
        scaling = {**(scaling if cfg.rope_type == "yarn" else {}), **(yarn or {}), "rope_type": "yarn"}
        if rope == "dynamic-yarn":
            scaling.setdefault("factor", 1.0)  # unused: each request brings its own
        for key in ("factor", "original_max_position_embeddings"):
            if key not in scaling:
                raise ValueError(f"{rope} needs '{key}': the config has no yarn block, so pass it in `yarn`")
    dca = dual_chunk or cfg.dual_chunk
    if attention == "config":
        attention = "dca" if dca is not None else "dense"
    if sparse is not None and attention not in ("sparse", "dca"):
        raise ValueError(f"sparse prefill settings apply to attention 'sparse' or 'dca', not {attention!r}")
    if attention == "dca" and rope == "dynamic-yarn":
        raise ValueError("dual chunk attention keeps every position below chunk_size; it is not combined with "
                         "dynamic YaRN")
    model.model.rotary_emb.configure(cfg.rope_theta, scaling, dynamic=rope == "dynamic-yarn")
    options = {"dca": {"dual_chunk": dca, "sparse": sparse}, "sparse": {"sparse": sparse}}.get(attention, {})
    model.set_attention(make_backend(attention, model, **options))


def _dual_chunk(model: torch.nn.Module, dual_chunk: DualChunkConfig | None = None,
                sparse: SparseConfig | None = None) -> DualChunkAttention:
    dca = dual_chunk or model.config.dual_chunk
    if dca is None:
        raise ValueError("attention 'dca' needs a dual_chunk_attention_config (none in config.json, none given)")
    if sparse is None and dca.sparse_attention_enabled:
        sparse = SparseConfig(dca.sparse_attention_config, dca.sparse_attention_threshold, dca.sparse_attention_last_q)
    return DualChunkAttention(dca, model.model.rotary_emb, sparse)


register_backend("chunked", lambda model: ChunkedAttention())
register_backend("sparse", lambda model, sparse=None: SparseAttention(sparse or SparseConfig()))
register_backend("dca", _dual_chunk)
