"""Math answers: extract the final answer from a response, then decide whether it equals the reference.

Extraction (SPEC §7): the last `\\boxed{...}` (braces matched), else the last "the answer is ..." phrase,
else the last number. Equality, cheapest first: the normalised strings; exact rationals within a relative
1e-4; then sympy in a separate process with a time limit (`symbolic.py`). Answers with structure are
compared part by part: ordered tuples and intervals (bracket kinds must agree), unordered sets and bare
comma lists (a list of solutions), unions of intervals, matrices.

Normalisation follows the usual MATH grading conventions: `$`, `\\left`/`\\right`, spacing commands, `\\text`
wrappers, trailing unit words, degrees, `\\$` and thousands separators go; `x = 5` compares as `5`; `\\dfrac`
is `\\frac`; a percentage also matches its value divided by 100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from qwen25.verify.symbolic import SymbolicChecker, default_checker
from qwen25.verify.verdict import Verdict

REL_TOL = 1e-4

_ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*|答案(?:是|为)?\s*[：:]?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+")
_FUNCTIONS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "cot", "sec", "csc",
              "log", "ln", "exp")


def brace_group(text: str, start: int) -> tuple[str, int] | None:
    """The content of the `{...}` opening at `start` and the index after its closing brace."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}`; `\\boxed 5` (no braces) also counts."""
    starts = [(m.start(), m.end()) for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    for _, end in reversed(starts):
        rest = text[end:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            group = brace_group(text, end + len(rest) - len(stripped))
            if group is not None:
                return group[0].strip()
        elif rest[:1] == " " and stripped:
            return re.split(r"[\s$]", stripped, maxsplit=1)[0]
    return None


def _phrase_answer(text: str) -> str | None:
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].strip().strip("*").strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            if end > 0:
                return rest[len(opener):end].strip()
    line = rest.split("\n", 1)[0]
    line = re.split(r"\.(?:\s|$)|。", line, maxsplit=1)[0]
    line = line.strip().strip("*").rstrip(".,;:!。，").strip()
    return line or None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when there is none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrase = _phrase_answer(text)
    if phrase is not None:
        return phrase
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _unwrap_command(text: str, command: str) -> str:
    """Replace every `\\command{X}` by X (braces matched)."""
    while True:
        m = re.search(re.escape(command) + r"\s*\{", text)
        if not m:
            return text
        group = brace_group(text, m.end() - 1)
        if group is None:
            return text
        text = text[:m.start()] + group[0] + text[group[1]:]


@dataclass(frozen=True)
class Normalized:
    text: str
    percent: bool = False


def normalize_answer(answer: str) -> Normalized:
    s = answer.strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(opener) and s.endswith(closer) and len(s) >= len(opener) + len(closer):
            s = s[len(opener):len(s) - len(closer)].strip()
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[!,;: ]|~", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", s)
    for command in ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox", "\\textnormal", "\\displaystyle"):
        s = _unwrap_command(s, command)
    s = s.replace("\\displaystyle", "").replace("{,}", "").replace("\\$", "").replace("$", "")
    percent = bool(re.search(r"\\?%\s*$", s))
    s = re.sub(r"\\?%\s*$", "", s).strip().rstrip(".").strip()
    unit = re.fullmatch(r"(-?[\d.,/]*\d)\s*(?:[a-zA-Z]{2,}\.?\s*)+(?:\^?\d)?", s)  # "5 cm", "12 dollars"
    if unit:
        s = unit.group(1)
    s = _strip_variable(s)
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", r"\1 ", s)  # "\pi r" keeps its space, nothing else does
    s = re.sub(r"(?<![a-zA-Z])\s+|\s+(?![a-zA-Z])", "", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)(?=\{)", r"\\frac{\1}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    return Normalized(s, percent)


def _strip_variable(s: str) -> str:
    """`x = 5` -> `5`, `x \\in [1, 2]` -> `[1, 2]`: a single variable naming the answer is not part of it."""
    m = re.fullmatch(r"\s*[a-zA-Z](?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*(.+)", s, re.DOTALL)
    return m.group(1).strip() if m and "=" not in m.group(1) else s


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """True when the bracket opening at s[0] closes at s[-1] (not earlier)."""
    depth = 0
    for i, ch in enumerate(s):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


@dataclass(frozen=True)
class Structure:
    kind: str  # "scalar", "ordered" (tuple/interval), "unordered" (set/list), "union", "matrix"
    items: tuple  # strings, or Structures for "union"
    brackets: str = ""  # opener + closer of an ordered answer
    shape: tuple[int, ...] = ()


def parse_structure(s: str) -> Structure:
    matrix = re.fullmatch(r"\\begin\{[pbvBV]?matrix\}(.*)\\end\{[pbvBV]?matrix\}", s, re.DOTALL)
    if matrix:
        rows = [row.split("&") for row in matrix.group(1).split("\\\\") if row.strip()]
        return Structure("matrix", tuple(c.strip() for row in rows for c in row), shape=(len(rows), len(rows[0])))
    if "\\cup" in s:
        pieces = _split_top_level(s, "\\cup")
        if len(pieces) > 1:
            return Structure("union", tuple(parse_structure(p) for p in pieces))
    if s.startswith("\\{") and s.endswith("\\}"):
        return Structure("unordered", tuple(p for p in _split_top_level(s[2:-2]) if p))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _encloses(s):
        parts = _split_top_level(s[1:-1])
        if len(parts) == 1:
            return parse_structure(parts[0])
        return Structure("ordered", tuple(parts), brackets=s[0] + s[-1])
    parts = _split_top_level(s)
    if len(parts) > 1:  # a list of solutions, maybe written "x=1,x=-1"
        return Structure("unordered", tuple(_strip_variable(p) for p in parts))
    return Structure("scalar", (s,))


def _exact_number(s: str) -> Fraction | None:
    """Integers, decimals, a/b and \\frac{a}{b} with integer parts, exactly; None for anything else."""
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if frac:
            return (-1 if frac.group(1) else 1) * Fraction(int(frac.group(2)), int(frac.group(3)))
        if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE]-?\d+)?|-?\d+/\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def latex_to_expression(s: str) -> str | None:
    """A sympy-parsable expression for a normalised LaTeX answer, or None when it uses unknown commands."""
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # 3\frac{1}{3} is a mixed number
    if mixed:
        return f"{mixed.group(1)}({mixed.group(2)}+{mixed.group(3)}/{mixed.group(4)})"
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    while (m := re.search(r"\\frac\s*(?=\{)", s)) is not None:
        num = brace_group(s, m.end())
        den = brace_group(s, num[1]) if num else None
        if den is None:
            return None
        s = s[:m.start()] + f"(({num[0]})/({den[0]}))" + s[den[1]:]
    while (m := re.search(r"\\binom\s*(?=\{)", s)) is not None:
        top = brace_group(s, m.end())
        bottom = brace_group(s, top[1]) if top else None
        if bottom is None:
            return None
        s = s[:m.start()] + f"binomial(({top[0]}),({bottom[0]}))" + s[bottom[1]:]
    while (m := re.search(r"\\sqrt\s*(\[[^\]]*\])?\s*(?=\{)", s)) is not None:
        arg = brace_group(s, m.end())
        if arg is None:
            return None
        root = f"**(1/({m.group(1)[1:-1]}))" if m.group(1) else "**(1/2)"
        s = s[:m.start()] + f"(({arg[0]}){root})" + s[arg[1]:]
    s = re.sub(r"\\pi(?![a-zA-Z])", " pi ", s)
    s = re.sub(r"\\infty(?![a-zA-Z])", " oo ", s)
    s = re.sub(r"\\(" + "|".join(_FUNCTIONS) + r")(?![a-zA-Z])",
               lambda m: " " + {"arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(m.group(1), m.group(1)) + " ", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)
    s = re.sub(r"(?<![A-Za-z])e(?![A-Za-z_])", " E ", s)  # Euler's number, as in MATH
    s = re.sub(r"(?<![A-Za-z])i(?![A-Za-z_])", " I ", s)  # the imaginary unit
    if "\\" in s:
        return None
    return s.replace("{", "(").replace("}", ")").replace("^", "**")


def _scalars_equal(a: str, b: str, checker: SymbolicChecker) -> tuple[bool, str]:
    if a == b:
        return True, "same string"
    na, nb = _exact_number(a), _exact_number(b)
    if na is not None and nb is not None:
        close = abs(na - nb) <= REL_TOL * max(abs(na), abs(nb))
        return close, f"numbers {float(na):g} and {float(nb):g}"
    if re.fullmatch(r"[A-Za-z]", a) or re.fullmatch(r"[A-Za-z]", b):  # choice letters, lone variables
        return False, "different letters"
    ea, eb = latex_to_expression(a), latex_to_expression(b)
    if ea is None or eb is None:
        return False, f"cannot read {a if ea is None else b!r} as an expression"
    equal, why = checker.equal(ea, eb)
    if equal is None:
        return False, f"symbolic check failed: {why}"
    return equal, "symbolically equal" if equal else "symbolically different"


def _structures_equal(a: Structure, b: Structure, checker: SymbolicChecker) -> tuple[bool, str]:
    if a.kind != b.kind or len(a.items) != len(b.items) or a.shape != b.shape:
        return False, f"{a.kind} of {len(a.items)} vs {b.kind} of {len(b.items)}"
    if a.kind == "scalar":
        return _scalars_equal(a.items[0], b.items[0], checker)
    if a.kind in ("ordered", "matrix"):
        if a.brackets != b.brackets:
            return False, f"brackets {a.brackets} vs {b.brackets}"
        for x, y in zip(a.items, b.items):
            ok, why = _scalars_equal(x, y, checker)
            if not ok:
                return False, f"element {x!r} vs {y!r}: {why}"
        return True, f"{a.kind} equal element by element"
    unused = list(b.items)  # unordered and union: find a partner for every item
    for x in a.items:
        for j, y in enumerate(unused):
            ok, _ = (_structures_equal(x, y, checker) if a.kind == "union" else _scalars_equal(x, y, checker))
            if ok:
                del unused[j]
                break
        else:
            return False, f"no match for {x!r}"
    return True, f"{a.kind} equal as sets"


def answers_equal(candidate: str, reference: str, checker: SymbolicChecker | None = None) -> tuple[bool, str]:
    """Whether two final answers (already extracted) are equal, and how that was decided."""
    checker = checker or default_checker()
    ca, cb = normalize_answer(candidate), normalize_answer(reference)
    if ca.text == cb.text:
        return True, "same normalised string"
    ok, why = _structures_equal(parse_structure(ca.text), parse_structure(cb.text), checker)
    if ok or ca.percent == cb.percent:
        return ok, why
    plain, percent = (ca, cb) if cb.percent else (cb, ca)  # 50% also equals 0.5
    value = _exact_number(percent.text)
    if value is None:
        return False, why
    ok, why_scaled = _scalars_equal(plain.text, f"\\frac{{{value.numerator}}}{{{value.denominator * 100}}}", checker)
    return ok, f"{why}; divided by 100: {why_scaled}"


def verify_math(response: str, reference: str, checker: SymbolicChecker | None = None) -> Verdict:
    """Extract the response's final answer and compare it with the reference answer."""
    answer = extract_answer(response)
    ref = last_boxed(reference) or reference
    if answer is None:
        return Verdict(False, "no answer found in the response", details={"reference": ref})
    ok, why = answers_equal(answer, ref, checker)
    return Verdict(ok, why, details={"extracted": answer, "reference": ref})
