"""`qwen25 pretrain | pipeline | sft | rm | dpo | grpo`: every training stage."""

from __future__ import annotations

import argparse


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


def cmd_rm_train(args: argparse.Namespace) -> None:
    from qwen25.posttraining.rm import load_rm_recipe, run_rm

    run_rm(load_rm_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_dpo_run(args: argparse.Namespace) -> None:
    from qwen25.posttraining.dpo import load_dpo_recipe, run_dpo

    run_dpo(load_dpo_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_grpo_run(args: argparse.Namespace) -> None:
    from qwen25.posttraining.grpo import load_grpo_recipe, run_grpo

    run_grpo(load_grpo_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def _add_recipe_run_flags(p, example: str, override: str, resume: str = "continue from the run's latest intact "
                          "checkpoint", fresh: str = "start over in the run's directory") -> None:
    """--recipe, --set and --resume/--fresh: what every recipe-driven training verb takes."""
    p.add_argument("--recipe", required=True, help=f"TOML recipe, e.g. {example}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a recipe value, e.g. {override}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help=resume)
    mode.add_argument("--fresh", action="store_true", help=fresh)


def add_training_verbs(sub) -> None:
    """pretrain, pipeline, sft."""
    pre = sub.add_parser("pretrain", help="staged pretraining").add_subparsers(dest="action", required=True)
    p = pre.add_parser("run", help="corpus -> tokenizer -> shards -> stages -> report (torchrun-aware)")
    _add_recipe_run_flags(p, "recipes/tiny.toml", "--set train.micro_batch=8 --set stages.1.tokens=2e6",
                          resume="continue from the run's latest checkpoint",
                          fresh="start over in the run's directory (its checkpoints and report are deleted; data kept)")
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
    _add_recipe_run_flags(p, "recipes/sft-tiny.toml", "--set lr=1e-3 --set phases.0.epochs=1")
    p.set_defaults(func=cmd_sft_run)


def add_alignment_verbs(sub) -> None:
    for verb, action, func, what, example, override in (
            ("rm", "train", cmd_rm_train, "reward model on preference pairs (Bradley-Terry); per-category accuracy",
             "recipes/rm-tiny.toml", "--set lr=5e-4 --set data.epochs=1"),
            ("dpo", "run", cmd_dpo_run, "DPO on preference pairs with the Online Merging Optimizer", "recipes/dpo-tiny.toml",
             "--set lr=1e-5 --set data.epochs=2"),
            ("grpo", "run", cmd_grpo_run, "GRPO with rule and/or reward-model rewards, variance-ordered queries",
             "recipes/grpo-tiny.toml", "--set steps=30 --set rollout.steps_per_rollout=2")):
        p = sub.add_parser(verb, help=what).add_subparsers(dest="action", required=True)
        p = p.add_parser(action, help=f"{what} (torchrun-aware); HF export at the end")
        _add_recipe_run_flags(p, example, override)
        p.set_defaults(func=func)
