"""Throughput of the sandbox on trivial programs: each one a fresh launcher, namespaces, uid and interpreter.

    .venv/bin/python bench/bench_sandbox.py [--n 64]

Prints programs/s for Python and bash, run one after another and through `run_many` with one worker per CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from qwen25.verify.sandbox import Program, detect_isolation, run_many, run_program


def rate(programs: list[Program], workers: int | None) -> float:
    start = time.perf_counter()
    results = [run_program(p) for p in programs] if workers is None else run_many(programs, workers=workers)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} trivial programs failed, first: {bad[0]}")
    return len(programs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="programs per measurement")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    print(f"isolation {detect_isolation()}; {cpus} cpus ({platform.processor() or platform.machine()}), "
          f"load {os.getloadavg()[0]:.2f}")
    cases = {"python": Program("print(sum(range(100)))"), "bash": Program("echo $((1 + 2))", language="bash")}
    print("\n| language | sequential programs/s | run_many programs/s (workers = cpus) |")
    print("|---|---|---|")
    for name, program in cases.items():
        batch = [program] * args.n
        print(f"| {name} | {rate(batch, None):.1f} | {rate(batch, cpus):.1f} |")


if __name__ == "__main__":
    main()
