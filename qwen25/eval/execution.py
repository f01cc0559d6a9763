"""Running model-written programs for code benchmarks: a minimal subprocess sandbox.

THIS IS WHERE THE VERIFY SANDBOX PLUGS IN. The harness calls any `CodeRunner` (a function `(program, timeout)
-> ExecResult`); `run_program` below is the stand-in until `qwen25.verify`'s sandbox lands. It runs each
program in a fresh Python process (isolated mode, no site packages of the user) in its own temporary
directory and session, with limits on CPU time, address space, file size and processes, without network
where the kernel lets an unprivileged namespace be made (`unshare -n`), and kills the whole process group on
timeout.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""  # the tail of stderr


CodeRunner = Callable[[str, float], ExecResult]

MEMORY_BYTES = 2 << 30
FILE_BYTES = 16 << 20
MAX_PROCESSES = 64


def _limits(timeout: float) -> None:
    """Runs in the child before exec: a new session (so the group can be killed) and resource limits."""
    os.setsid()
    cpu = int(timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that runs a program without network (`unshare -n`), or () where it is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        ok = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (unshare, "-n") if ok else ()


def run_program(program: str, timeout: float = 10.0) -> ExecResult:
    """Run `program` with `python -I`; it passes when it exits 0 within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="qwen25-exec-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": "1"}
        cmd = [*network_isolation(), sys.executable, "-I", path]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=lambda: _limits(timeout))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended just now
            proc.communicate()
            return ExecResult(False, "timeout", f"no exit within {timeout:g} s")
        detail = err.decode("utf-8", "replace")[-500:]
        return ExecResult(proc.returncode == 0, "passed" if proc.returncode == 0 else "failed", detail)
