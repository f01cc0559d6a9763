"""A long-lived process that decides whether two math expressions are equal, with sympy.

Run by `qwen25.verify.symbolic` as `python -I symbolic_worker.py`; one JSON request per stdin line
({"a": expr, "b": expr}), one JSON reply per stdout line ({"equal": bool} or {"error": message}). The parent
kills and restarts it when a request runs past its time limit (sympy's simplify can take forever).

sympy's parser calls eval(), and the expressions come from model output, so every expression is first
tokenised against an allow list: numbers, operators, parentheses, single-letter variables (with an optional
numeric subscript) and a fixed set of function and constant names. Nothing else reaches the parser.
"""

import cmath
import json
import random
import re
import resource
import sys

TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE]-?\d+)?|\.\d+)|([A-Za-z]+(?:_\d+)?)|(\*\*|[-+*/(),!]))")
FUNCTIONS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh",
             "log", "ln", "exp", "Abs", "binomial", "factorial", "floor", "ceiling"}
CONSTANTS = {"pi", "oo", "E", "I"}
MEMORY_BYTES = 2 << 30


def allowed(text: str) -> bool:
    pos = 0
    while pos < len(text.rstrip()):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return False
        name = m.group(2)
        if name and not (name in FUNCTIONS or name in CONSTANTS or re.fullmatch(r"[A-Za-z](_\d+)?", name)):
            return False
        pos = m.end()
    return True


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    names = {name: getattr(sympy, name) for name in FUNCTIONS | CONSTANTS if hasattr(sympy, name)}
    names["ln"] = sympy.log
    names.update({"Symbol": sympy.Symbol, "Integer": sympy.Integer, "Float": sympy.Float,
                  "Rational": sympy.Rational, "Function": sympy.Function, "__builtins__": {}})

    def parse(text: str):
        if not allowed(text):
            raise ValueError(f"not an allowed expression: {text[:80]!r}")
        return parse_expr(text, global_dict=dict(names), transformations=transformations, evaluate=True)

    def equal(a, b) -> bool:
        if a == b:
            return True
        symbols = sorted(a.free_symbols | b.free_symbols, key=str)
        if not symbols:
            if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
                return sympy.simplify(a - b) == 0
            va, vb = sympy.N(a, 30), sympy.N(b, 30)  # sympy floats: 2**5000000 does not overflow to inf
            diff = abs(va - vb)
            return bool(diff <= 1e-4 * max(abs(va), abs(vb))) or bool(diff < 1e-12)
        if sympy.simplify(a - b) == 0:
            return True
        rng = random.Random(0)  # simplify can miss identities: compare at random points instead
        for _ in range(5):
            point = {s: sympy.Float(rng.uniform(0.5, 2.5)) for s in symbols}
            va, vb = complex(a.evalf(subs=point)), complex(b.evalf(subs=point))
            if not (cmath.isfinite(va) and cmath.isfinite(vb)) or abs(va - vb) > 1e-9 * max(1.0, abs(va), abs(vb)):
                return False
        return True

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"equal": bool(equal(parse(request["a"]), parse(request["b"])))}
        except Exception as e:  # a reply for every request, whatever sympy raises
            reply = {"error": f"{type(e).__name__}: {e}"[:300]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
