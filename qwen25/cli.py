"""`qwen25 <verb>`: one command line for every stage."""

from __future__ import annotations

import argparse
import sys


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cmd_info(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qwen25.model import ModelConfig, build_model, count_parameters, get_preset

    if Path(args.model).exists():
        cfg = ModelConfig.from_file(args.model)
    else:
        cfg, _ = get_preset(args.model)
    model = build_model(cfg, device="meta")
    total, non_embedding = count_parameters(model)
    print(args.model)
    print(f"  total parameters:         {total:>15,} ({_human(total)})")
    print(f"  non-embedding parameters: {non_embedding:>15,} ({_human(non_embedding)})")
    print(f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.kv_head_dim}, "
          f"vocab {cfg.vocab_size}, tied embeddings {'yes' if cfg.tie_word_embeddings else 'no'}")
    print(f"  max positions {cfg.max_position_embeddings}, rope_theta {cfg.rope_theta:g}, "
          f"rms_norm_eps {cfg.rms_norm_eps:g}, eos {cfg.eos_token_id}, dtype {cfg.dtype}")


def _parse_ids(text: str) -> list[int] | None:
    parts = text.replace(",", " ").split()
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def cmd_generate(args: argparse.Namespace) -> None:
    from qwen25.generation import SamplingParams, stream
    from qwen25.model import load_model

    model = load_model(args.model, dtype=args.dtype).eval()
    prompt = _parse_ids(args.prompt)
    if prompt is None:
        raise SystemExit("error: --prompt must be token ids (e.g. '9707 1879 11') until a tokenizer is given")
    if any(not 0 <= t < model.config.vocab_size for t in prompt):
        raise SystemExit(f"error: --prompt has ids outside the vocabulary of {model.config.vocab_size}")
    params = SamplingParams.from_generation_config(
        model.generation_config, max_new_tokens=args.max_new_tokens, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        do_sample=True if args.sample else (False if args.greedy else None),
    )
    for token in stream(model, prompt, params):
        print(token, end=" ", flush=True)
    print()


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
        sparse = SparseConfig(patterns, args.sparse_threshold if args.sparse_threshold is not None else 32768)
    configure(model, rope=args.rope, attention=args.attention, yarn=yarn or None, dual_chunk=dual_chunk,
              sparse=sparse)


def cmd_eval_longctx(args: argparse.Namespace) -> None:
    from qwen25.longctx.evaluate import accuracy_table, evaluate, load_tokenizer
    from qwen25.model import load_model

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype).eval()
    _configure_long_context(model, args)
    stop = set(model.config.eos_token_ids)
    eos = model.generation_config.get("eos_token_id")
    stop.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
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
    from qwen25.longctx import ATTENTION_CHOICES, ROPE_CHOICES

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
    p.add_argument("--sparse-threshold", type=int, help="prompt length above which prefill is sparse (32768)")
    p.add_argument("--prefill-chunk", type=int, help="feed prompts this many tokens per forward")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("info", help="parameter counts and shape of a preset or checkpoint directory")
    p.add_argument("model", help="preset name (e.g. qwen2.5-7b) or HF model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from a preset (random weights) or a checkpoint directory")
    p.add_argument("--model", required=True, help="preset name or HF model directory")
    p.add_argument("--prompt", required=True, help="token ids, space or comma separated")
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
