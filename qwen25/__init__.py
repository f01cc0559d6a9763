"""qwen25: the system of the Qwen2.5 technical report, in PyTorch.

The public names below are imported on first use, so `import qwen25` (and the `qwen25` command, whose Ctrl-C and
error handling must be in place before torch loads) stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CausalLMOutput": "qwen25.model", "CheckpointError": "qwen25.model", "ConfigError": "qwen25.model",
    "ModelConfig": "qwen25.model", "Qwen2ForCausalLM": "qwen25.model", "build_model": "qwen25.model",
    "count_parameters": "qwen25.model", "get_preset": "qwen25.model",
    "from_pretrained": "qwen25.loading", "load_model": "qwen25.loading",
    "generate": "qwen25.generation", "stream": "qwen25.generation", "SamplingParams": "qwen25.inference.sampling",
    "Completion": "qwen25.inference.engine", "ContinuationScore": "qwen25.inference.engine",
    "Delta": "qwen25.inference.engine", "Engine": "qwen25.inference.engine", "QueueFull": "qwen25.inference.engine",
    "RequestOutput": "qwen25.inference.engine",
    "load_tokenizer": "qwen25.tokenizer",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qwen25' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
