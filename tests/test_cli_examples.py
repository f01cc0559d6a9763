"""The README's command lines and every `e.g.` in `qwen25 --help` work as written.

Each README line is parsed by the real parser (optional `[...]` parts with and without, `a | b` alternatives
each); a recipe it names is loaded with its `--set` overrides; a `runs/...` path must be one the recipes'
runs write; the self-contained lines (info, tokenizer, generate on a preset) are run and the figures in their
comments must appear in the output. Every help example is checked the same way (a new one without a check
fails the coverage test)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from qwen25.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent

# func of a verb that takes --recipe -> its loader (module:function), as the cmd_* functions call it
LOADERS = {
    "cmd_pretrain_run": "qwen25.pretraining.recipe:load_recipe",
    "cmd_sft_run": "qwen25.posttraining.sft:load_sft_recipe",
    "cmd_rm_train": "qwen25.posttraining.rm:load_rm_recipe",
    "cmd_dpo_run": "qwen25.posttraining.dpo:load_dpo_recipe",
    "cmd_grpo_run": "qwen25.posttraining.grpo:load_grpo_recipe",
    "cmd_scaling_sweep": "qwen25.scaling.recipe:load_scaling_recipe",
    "cmd_scaling_validate": "qwen25.scaling.recipe:load_scaling_recipe",
    "cmd_data_pipeline": "qwen25.data.pipeline.recipe:load_data_recipe",
}


def load_recipe(func, recipe: str, overrides: list[str]):
    module, name = LOADERS[func.__name__].split(":")
    return getattr(importlib.import_module(module), name)(ROOT / recipe if not Path(recipe).is_absolute() else recipe,
                                                          overrides)


def run_outputs() -> set[str]:
    """Paths under runs/ that the README may name: what the bundled recipes' runs write."""
    from qwen25.posttraining.sft import load_sft_recipe
    from qwen25.pretraining.recipe import load_recipe as load_pretrain
    from qwen25.scaling.recipe import load_scaling_recipe

    pre = load_pretrain(ROOT / "recipes/tiny.toml")
    sft = load_sft_recipe(ROOT / "recipes/sft-tiny.toml")
    scaling = load_scaling_recipe(ROOT / "recipes/scaling-cpu.toml")
    steps = sum(stage.steps for stage in pre.stages)
    paths = [pre.directory / "hf", pre.directory / "checkpoints" / f"step-{steps:08d}",
             pre.directory / "data" / "corpus" / "train.jsonl", sft.directory / "hf" / sft.phases[-1].name,
             scaling.directory / "results.jsonl", scaling.directory / "fit"]
    return {str(p) for p in paths}


# ---- the README's command lines ---------------------------------------------------------------------------------

def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("**Command line**\n```\n") + len("**Command line**\n```\n")
    return [line for line in text[start:text.index("```", start)].splitlines() if line.strip()]


def variants(tokens: list[str]) -> list[list[str]]:
    """`a [b c | d] e` -> [a e], [a b c e], [a d e]."""
    if "[" not in "".join(t[:1] for t in tokens):
        return [tokens]
    i = next(i for i, t in enumerate(tokens) if t.startswith("["))
    j = next(j for j in range(i, len(tokens)) if tokens[j].endswith("]"))
    inner = " ".join(tokens[i:j + 1])[1:-1].split()
    options, current = [], []
    for t in inner:
        if t == "|":
            options.append(current)
            current = []
        else:
            current.append(t)
    options.append(current)
    return [v for option in [[], *options] for v in variants(tokens[:i] + option + tokens[j + 1:])]


def commands(line: str) -> list[list[str]]:
    """The qwen25 argument lists one README line stands for (`;`, `&` and `wait` of the shell dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argvs, current = [], []
    for token in [*lexer, ";"]:
        if token in (";", "&", ";&"):
            if current and current != ["wait"]:
                argvs.append(current)
            current = []
        else:
            current.append(token)
    out = []
    for argv in argvs:
        if argv[0] == "torchrun":
            argv = argv[argv.index("qwen25.cli") + 1:]
        else:
            assert argv[0] == "qwen25", f"README command line does not start with qwen25: {line}"
            argv = argv[1:]
        out.extend(variants(argv))
    return out


def runs_itself(argv: list[str]) -> bool:
    """Lines that need no data, run or download: these are executed."""
    return (argv[0] == "info" or argv[0] == "tokenizer" and argv[1] in ("encode", "build-qwen")
            or argv[0] == "generate" and argv[argv.index("--model") + 1].startswith("qwen25-"))


def figures(comment: str) -> list[str]:
    return re.findall(r"\d+(?:[.,]\d+)*B?", comment)


@pytest.mark.parametrize("line", readme_lines(), ids=[" ".join(line.split()[1:3]) for line in readme_lines()])
def test_readme_command_line(line, capsys, tmp_path, monkeypatch):
    parser = build_parser()
    outputs = run_outputs()
    comment = line.split(" # ", 1)[1] if " # " in line else ""
    for argv in commands(line):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README: `qwen25 {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
        if getattr(args, "recipe", None):
            load_recipe(args.func, args.recipe, args.set)
        for token in argv:
            if token.startswith("runs/"):
                assert token in outputs, f"README names {token}, which no bundled recipe's run writes ({outputs})"
            elif token.startswith(("recipes/", "docs/")):
                assert (ROOT / token).exists(), f"README names {token}, which is not in the repository"
        if runs_itself(argv):
            capsys.readouterr()
            monkeypatch.chdir(tmp_path)
            main(argv)
            out = capsys.readouterr().out
            missing = [f for f in figures(comment) if f not in out and f.rstrip("B") not in out.replace(" ", ",")]
            assert not missing, f"`qwen25 {' '.join(argv)}` printed {out!r}, without the README's {missing}"


def test_readme_lines_are_understood():
    lines = readme_lines()
    assert len(lines) >= 25 and all(commands(line) for line in lines)
    assert commands("qwen25 a --x 1 [--y 2 | --z] &   # c") == [["a", "--x", "1"], ["a", "--x", "1", "--y", "2"],
                                                               ["a", "--x", "1", "--z"]]
    assert commands("qwen25 a; wait") == [["a"]]
    assert sum(runs_itself(argv) for line in lines for argv in commands(line)) >= 5


# ---- the examples in --help ------------------------------------------------------------------------------------

def help_examples() -> list[tuple[str, argparse.ArgumentParser, argparse.Action, str]]:
    found = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):
                    walk(sub)
            elif action.help and "e.g." in action.help:
                match = re.search(r"e\.g\. ((?:--set \S+(?: |$))+|'[^']*'|[^\s)]+)", action.help)
                found.append((parser.prog, parser, action, match.group(1).strip()))
    walk(build_parser())
    return found


def recipe_of(parser: argparse.ArgumentParser) -> str:
    action = next(a for a in parser._actions if a.dest == "recipe")
    if action.help and "e.g." in action.help:
        return re.search(r"e\.g\. (\S+)", action.help).group(1)
    return action.default


def check_example(parser: argparse.ArgumentParser, action: argparse.Action, example: str) -> None:
    func = parser.get_default("func")
    if action.dest == "set":
        overrides = example.split()[1::2]
        assert example.split()[::2] == ["--set"] * len(overrides)
        load_recipe(func, recipe_of(parser), overrides)
    elif action.dest == "recipe":
        load_recipe(func, example, [])
    elif example.startswith("runs/"):
        assert example in run_outputs(), f"{example} is not a path the bundled recipes' runs write"
    elif example.startswith(("docs/", "recipes/")):
        assert (ROOT / example).exists()
    elif action.dest == "prompt_ids":
        from qwen25.inference.commands import parse_ids

        assert parse_ids(example.strip("'"))
    elif action.dest == "languages":
        from qwen25.data.crosslingual import NAMES

        assert all(code in NAMES for code in example.split(","))
    elif parser.prog == "qwen25 models fetch":
        from qwen25.inference.hub import known_model

        known_model(example)
    elif parser.prog == "qwen25 info":
        from qwen25.model import describe_model

        describe_model(example)
    elif action.type is not None:
        action.type(example)
    else:
        pytest.fail(f"no check for the help example {example!r} of {parser.prog} {action.dest}")


@pytest.mark.parametrize("prog,parser,action,example", help_examples(),
                         ids=[f"{p.removeprefix('qwen25 ')}:{a.dest}" for p, _, a, _ in help_examples()])
def test_help_example(prog, parser, action, example):
    check_example(parser, action, example)


def test_help_examples_are_found():
    found = {(prog, action.dest) for prog, _, action, _ in help_examples()}
    assert {("qwen25 sft run", "set"), ("qwen25 dpo run", "set"), ("qwen25 generate", "prompt_ids"),
            ("qwen25 pretrain export", "checkpoint")} <= found
    assert len(found) >= 15
