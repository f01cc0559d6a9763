"""Final answers of math solutions, and whether two answers are the same (SPEC §7).

Extraction: the last `\\boxed{...}` (braces matched), else the text after the last "answer is", else the last
number. Comparison: as normalised strings, then as numbers (relative tolerance 1e-4), then symbolically (common LaTeX
turned into sympy syntax) in a child process with a timeout (parsing untrusted LaTeX can take unbounded time).

This is the harness's own minimal checker; the verifiers package (`qwen25.verify`) replaces `answers_match`
when it lands.
"""

from __future__ import annotations

import multiprocessing
import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces matched; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    lowered = text.lower()
    at = lowered.rfind("answer is")
    if at >= 0:
        tail = text[at + len("answer is"):].strip().lstrip(":").strip()
        tail = tail.split("\n")[0]
        tail = re.sub(r"\s*I hope it is correct.*$", "", tail).strip()
        tail = tail.rstrip(".").strip()
        if tail.startswith("$") and tail.endswith("$") and len(tail) > 1:
            tail = tail[1:-1]
        if tail:
            return tail.strip()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """Strip what does not change a final answer: spaces, $, \\left/\\right, text units, trailing period."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(left|right|!|,|;|:|quad|qquad)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\%", "").replace("%", "").replace("dollars", "").replace("\\$", "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def _as_number(s: str) -> float | None:
    s = s.replace(",", "")
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)/(\d+)", s) or re.fullmatch(r"\\frac\{(-?\d+(?:\.\d+)?)\}\{(\d+)\}", s)
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def latex_to_sympy(s: str) -> str:
    """Common LaTeX in final answers as sympy syntax: fractions, roots, powers, pi, products."""
    for _ in range(8):  # nested fractions and roots, innermost first
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\[([^{}\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = re.sub(r"\\frac(\d)(\d)", r"((\1)/(\2))", s)
    s = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    return s.replace("{", "(").replace("}", ")").replace("\\", "")


def _sympy_equal(a: str, b: str) -> bool:
    from sympy import simplify
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    transformations = standard_transformations + (implicit_multiplication_application,)
    try:
        left = parse_expr(latex_to_sympy(a), transformations=transformations, evaluate=True)
        right = parse_expr(latex_to_sympy(b), transformations=transformations, evaluate=True)
        return bool(simplify(left - right) == 0)
    except Exception:  # any parse or simplify failure means "not shown equal"
        return False


_worker = None  # one child process, started (and sympy imported) once, replaced after a timeout


def _symbolically_equal(a: str, b: str, timeout: float) -> bool:
    global _worker
    if _worker is None:
        _worker = multiprocessing.get_context("spawn").Pool(1)
        _worker.apply(_sympy_equal, ("1", "1"))  # start-up and imports, outside any comparison's timeout
    try:
        return _worker.apply_async(_sympy_equal, (a, b)).get(timeout)
    except multiprocessing.TimeoutError:
        _worker.terminate()
        _worker = None
        return False


def answers_match(predicted: str | None, gold: str, symbolic: bool = True, timeout: float = 5.0) -> bool:
    if predicted is None:
        return False
    p, g = normalize(predicted), normalize(gold)
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return abs(pn - gn) <= 1e-4 * max(1.0, abs(gn))
    if symbolic and ("\\" in p or "\\" in g or any(c.isalpha() for c in p + g)):
        return _symbolically_equal(p, g, timeout)
    return False
