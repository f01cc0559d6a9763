"""`qwen25 data ...`: the corpus, post-training data (queries, rejection sampling, back-translation, critics),
the quality pipeline and decontamination."""

from __future__ import annotations

import argparse
import sys

from qwen25.argtypes import float_in, int_at_least, nonnegative_int, positive_int, unit_interval


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from qwen25.data.sources import fetch_sources, sources_dir

    fetch_sources(quiet=not args.verbose)
    print(f"sources cached in {sources_dir()}")


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


def cmd_data_decontaminate(args: argparse.Namespace) -> None:
    from qwen25.eval.decontaminate import decontaminate_file

    report = decontaminate_file(args.input, args.against, args.out, tokenizer=args.tokenizer, field=args.field,
                                report_path=args.report, window=args.window,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"kept {report['documents_kept']}/{report['documents']} documents "
          f"({report['documents_per_second']:.1f} documents/s); report in {report['report']}")


def add_data_verbs(sub) -> None:
    """fetch, the post-training data verbs, the quality pipeline, decontaminate."""
    data = sub.add_parser("data", help="offline corpus").add_subparsers(dest="action", required=True)
    p = data.add_parser("fetch", help="download the pinned source archives once (setup step)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_data_fetch)
    _add_curation_verbs(data)
    _add_quality_verbs(data)
    _add_decontaminate_verb(data)


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


def _add_decontaminate_verb(data) -> None:
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
