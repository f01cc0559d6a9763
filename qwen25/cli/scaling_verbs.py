"""`qwen25 scaling sweep | fit | predict | validate`: hyperparameter scaling laws."""

from __future__ import annotations

import argparse

from qwen25.argtypes import nonnegative_int, positive_float


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


def add_scaling_verbs(sub) -> None:
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
