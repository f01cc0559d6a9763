"""Long context at inference (report §3.3, SPEC §5): YaRN (static and per request), dual chunk attention,
sparse prefill, chunked prefill, and the passkey / RULER-style evaluations that check them.

    from qwen25.longctx import configure, prefill
    configure(model, rope="dynamic-yarn")            # or attention="dca" / "sparse" / "chunked"
"""

from qwen25.longctx.chunked import prefill
from qwen25.longctx.configure import ATTENTION_CHOICES, ROPE_CHOICES, configure
from qwen25.longctx.sparse import SparseConfig, load_patterns
from qwen25.model.config import DualChunkConfig

__all__ = ["ATTENTION_CHOICES", "DualChunkConfig", "ROPE_CHOICES", "SparseConfig", "configure", "load_patterns",
           "prefill"]
