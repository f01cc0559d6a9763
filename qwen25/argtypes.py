"""argparse value types with ranges, so a bad flag is refused by the parser in one line that names it
(`argument --lengths: must be an integer >= 1, got '-5'`) before any work starts."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if kind is int:
        if value != int(value):
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
        return int(value)
    return value


def int_at_least(low: int, high: int | None = None):
    """An integer >= low (and <= high); '2e6' is accepted as 2000000."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float | None = None, low_open: bool = False):
    """A finite number in [low, high] ((low, high] with low_open)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            bound = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}]" if high is not None else "inf)")
            raise argparse.ArgumentTypeError(f"must be a number in {bound}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
unit_interval = float_in(0.0, 1.0)
