"""Structured output: JSON that must satisfy a JSON Schema (checked by the maintained `jsonschema` package,
draft chosen by the schema's `$schema`, 2020-12 by default), and markdown tables with given columns."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import jsonschema

from qwen25.verify.instructions import strip_code_fence
from qwen25.verify.verdict import Verdict


def parse_json_response(response: str) -> tuple[object, str | None]:
    """(value, None) for a response that is JSON, maybe in a ```json fence; (None, why) otherwise."""
    try:
        return json.loads(strip_code_fence(response)), None
    except ValueError as e:
        return None, f"not valid JSON: {e}"


def check_json_schema(response: str, schema: dict) -> Verdict:
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"check_json_schema: the schema itself is invalid at {list(e.path)}: {e.message}") from None
    value, error = parse_json_response(response)
    if error:
        return Verdict(False, error, "error")
    problem = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "(root)"
        return Verdict(False, f"schema violation at {where}: {problem.message}", details={"value": value})
    return Verdict(True, "valid JSON matching the schema", details={"value": value})


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_markdown_table(response: str) -> tuple[list[str], list[list[str]]] | None:
    """The first pipe table in the response: (header cells, data rows), or None when there is none."""
    lines = response.splitlines()
    for i in range(len(lines) - 1):
        if "|" in lines[i] and re.fullmatch(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*", lines[i + 1]):
            header = _cells(lines[i])
            rows = []
            for line in lines[i + 2:]:
                if "|" not in line or not line.strip():
                    break
                rows.append(_cells(line))
            return header, rows
    return None


def check_markdown_table(response: str, columns: Sequence[str], min_rows: int = 1,
                         max_rows: int | None = None) -> Verdict:
    """A table whose header is exactly `columns` (in order, case-insensitive) with every row complete."""
    table = parse_markdown_table(response)
    if table is None:
        return Verdict(False, "no markdown table found")
    header, rows = table
    if [h.lower() for h in header] != [c.lower() for c in columns]:
        return Verdict(False, f"columns {header} instead of {list(columns)}")
    ragged = [i for i, r in enumerate(rows) if len(r) != len(header) or not all(r)]
    if ragged:
        return Verdict(False, f"row {ragged[0]} has {len(rows[ragged[0]])} cells or an empty one", details={"rows": rows})
    if len(rows) < min_rows or (max_rows is not None and len(rows) > max_rows):
        bound = f"{min_rows}..{max_rows}" if max_rows is not None else f">= {min_rows}"
        return Verdict(False, f"{len(rows)} rows, expected {bound}", details={"rows": rows})
    return Verdict(True, f"table with columns {list(columns)} and {len(rows)} rows", details={"rows": rows})
