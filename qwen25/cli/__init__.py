"""`qwen25 <verb>`: one command line for every stage."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from qwen25.cli.data_verbs import add_data_verbs
from qwen25.cli.eval_verbs import add_eval_verbs
from qwen25.cli.model_verbs import add_conversion_verbs, add_model_verbs, add_quantize_verb
from qwen25.cli.scaling_verbs import add_scaling_verbs
from qwen25.cli.tokenizer_verbs import add_tokenizer_verbs
from qwen25.cli.training_verbs import add_alignment_verbs, add_training_verbs

# Errors a user can cause and fix (bad arguments, files, recipes, data): one line, exit 2. Anything else is a
# bug in qwen25 and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError, UnicodeError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`qwen25 generate: error: argument --max-new-tokens: ...`), exit 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    add_model_verbs(sub)
    add_tokenizer_verbs(sub)
    add_training_verbs(sub)
    add_data_verbs(sub)
    add_eval_verbs(sub)
    add_conversion_verbs(sub)
    add_alignment_verbs(sub)
    add_scaling_verbs(sub)
    add_quantize_verb(sub)
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
