"""`qwen25 serve`: load a model and its tokenizer, start the engine thread, and serve the API with uvicorn.

It binds to 127.0.0.1 unless told otherwise: serving on a network is a choice, and then `--api-key` guards it.
"""

from __future__ import annotations

from pathlib import Path

import uvicorn

from qwen25.inference.engine import Engine
from qwen25.inference.quantize import QuantizationConfig, default_int8_group_size, quantize_model
from qwen25.loading import load_model, resolve_model
from qwen25.serving.app import create_app
from qwen25.serving.runner import EngineRunner
from qwen25.serving.translate import ServedModel
from qwen25.tokenizer import load_tokenizer


def build_server(model, tokenizer, name: str, max_batch: int = 16, max_queue: int = 64,
                 api_key: str | None = None, prefill_chunk: int | None = 512, kernels: str | None = None):
    """(app, runner) for a loaded model: the runner is started; stop it when done."""
    if max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {max_queue}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}: they do not belong together (--tokenizer / --model)")
    engine = Engine(model, tokenizer, max_batch=max_batch, prefill_chunk=prefill_chunk, max_waiting=max_queue,
                    kernels=kernels)
    served = ServedModel(name=name, tokenizer=tokenizer, vocab_size=model.config.vocab_size,
                         max_positions=model.config.max_position_embeddings, max_batch=max_batch,
                         generation_config=dict(getattr(model, "generation_config", None) or {}))
    runner = EngineRunner(engine)
    runner.start()
    return create_app(served, runner, api_key), runner


def load_served_model(model: str, tokenizer: str | None = None, dtype: str | None = None,
                      quantize: str | None = None):
    """(model, tokenizer, reference) as `qwen25 serve` runs them. `quantize` ("int8" or "int4") quantizes the
    weights on load by rounding to the nearest grid point (no calibration pass, so the server starts in
    seconds; `qwen25 quantize` writes a GPTQ directory once, which serves as is)."""
    ref = resolve_model(model)
    lm = load_model(ref, dtype=dtype).eval()
    if tokenizer is None and not (Path(ref) / "tokenizer.json").is_file():
        raise ValueError(f"--model {model}: no tokenizer.json beside the model; pass --tokenizer DIR (or 'qwen2.5')")
    tok = load_tokenizer(tokenizer or ref)
    if quantize is not None:
        if "quantization_config" in lm.config.extra:
            raise ValueError(f"--model {model} is already quantized; drop --quantize")
        try:
            groups = default_int8_group_size(lm.config) if quantize == "int8" else None
            quantize_model(lm, QuantizationConfig(quantize, method="rtn", int8_group_size=groups))
        except ValueError as e:  # a layer width the int4 groups do not divide, an MoE model
            raise ValueError(f"--quantize {quantize}: {model}: {e}") from None
    return lm, tok, ref


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, tokenizer: str | None = None, dtype: str | None = None,
          max_batch: int = 16, max_queue: int = 64, quantize: str | None = None) -> None:
    """Serve `model` (a directory, a fetched model's name or a preset) until interrupted."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key must not be empty")
    lm, tok, ref = load_served_model(model, tokenizer, dtype, quantize)
    name = served_model_name or (Path(ref).name if Path(ref).exists() else model)
    app, runner = build_server(lm, tok, name, max_batch=max_batch, max_queue=max_queue, api_key=api_key)
    print(f"serving {name!r}{f' ({quantize})' if quantize else ''} on http://{host}:{port}/v1 (max batch "
          f"{max_batch}, queue {max_queue}"
          f"{', API key required' if api_key else ''})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        runner.stop()
