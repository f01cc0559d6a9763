"""`qwen25 eval run | longctx` and `qwen25 longctx extrapolate`: benchmarks and long-context experiments."""

from __future__ import annotations

import argparse
import sys

from qwen25.argtypes import float_in, nonnegative_int, positive_float, positive_int, unit_interval


def cmd_eval_run(args: argparse.Namespace) -> None:
    from qwen25.eval.harness import EvalSettings, items_path, markdown_table, run_eval

    settings = EvalSettings(**{k: getattr(args, k) for k in EvalSettings.__dataclass_fields__})
    results, _ = run_eval(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown_table(results))
    if args.out:
        print(f"wrote {args.out} and {items_path(args.out)}")


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
    from qwen25.eval.longctx import accuracy_table, evaluate
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
    p.add_argument("--yarn-factor", type=float_in(1.0), help="static YaRN factor (when config.json has none)")
    p.add_argument("--original-max-positions", type=positive_int,
                   help="trained length for YaRN and for dual chunk attention's logit scaling")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="config",
                   help="attention for long inputs (default: dual chunk if config.json has it, else dense)")
    p.add_argument("--chunk-size", type=positive_int, help="dual chunk attention chunk_size instead of config.json's")
    p.add_argument("--local-size", type=positive_int, help="dual chunk attention local_size (default chunk_size / 8)")
    p.add_argument("--sparse-patterns", help="per-head sparse budgets, a JSON file in MInference's format")
    p.add_argument("--sparse-threshold", type=nonnegative_int,
                   help=f"prompt length above which prefill is sparse ({SparseConfig.threshold})")
    p.add_argument("--prefill-chunk", type=positive_int, help="feed prompts this many tokens per forward")


def add_eval_verbs(sub) -> None:
    """eval longctx, eval run, longctx extrapolate."""
    p = sub.add_parser("eval", help="evaluations")
    evals = p.add_subparsers(dest="suite", required=True)
    p = evals.add_parser("longctx", help="passkey and RULER-style long-context tasks; accuracy table by length")
    p.add_argument("--model", required=True, help="HF model directory with tokenizer.json")
    p.add_argument("--tasks", default="passkey", help="comma separated: passkey, niah_single, niah_multikey, "
                   "niah_multivalue, variable_tracking, common_words, frequent_words")
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[4096], help="prompt lengths in tokens")
    p.add_argument("--depths", type=unit_interval, nargs="+", default=[0.5], help="needle depths in [0, 1]")
    p.add_argument("--samples", type=positive_int, default=5, help="prompts per task, length and depth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--verbose", action="store_true", help="print every answer to stderr")
    _long_context_arguments(p)
    p.set_defaults(func=cmd_eval_longctx)
    _add_eval_run_verb(evals)

    p = sub.add_parser("longctx", help="long-context experiments")
    experiments = p.add_subparsers(dest="experiment", required=True)
    from qwen25.longctx.extrapolation import add_arguments

    p = experiments.add_parser("extrapolate", help="train a tiny passkey model at length L; evaluate RoPE, "
                               "static/dynamic YaRN and dual chunk attention at L..8L")
    add_arguments(p)
    p.set_defaults(func=cmd_longctx_extrapolate)


def _add_eval_run_verb(evals) -> None:
    p = evals.add_parser("run", help="benchmarks offline (ARC, HellaSwag, MMLU, GSM8K, MATH-500, HumanEval, MBPP, "
                         "passkey, RULER): markdown table, JSON and per-item records")
    p.add_argument("--model", required=True, help="HF model directory, fetched model name or preset")
    p.add_argument("--tasks", required=True, help="comma separated, each NAME or NAME:VARIANT: arc_easy, "
                   "arc_challenge, hellaswag, mmlu, gsm8k, math500, humaneval, mbpp, passkey, ruler")
    p.add_argument("--limit", type=positive_int, help="first N items of each task")
    p.add_argument("--shots", type=nonnegative_int, help="few-shot examples (default: each task's own)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="chat prompts for generative tasks (default: when the tokenizer is an instruct one)")
    p.add_argument("--out", help="results JSON; per-item records go beside it as NAME.items.jsonl")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--batch-tokens", type=positive_int, default=256,
                   help="multiple choice: continuation tokens per forward")
    p.add_argument("--batch-size", type=positive_int, default=8, help="generation: sequences decoded together")
    p.add_argument("--max-new-tokens", type=positive_int, help="override every generative task's token budget")
    p.add_argument("--samples", type=positive_int, default=1, help="generations per problem (pass@k, mean accuracy)")
    p.add_argument("--temperature", type=float_in(0.0), help="default: greedy with one sample, 0.8 with several")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="CPU seconds per program (code tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval_run)
