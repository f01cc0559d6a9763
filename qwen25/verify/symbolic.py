"""Symbolic equality of math expressions in a separate process with a time limit (see symbolic_worker.py).

The worker keeps sympy imported (importing it takes most of a second), answers one request at a time, and is
killed and restarted when a request runs past the limit, so a pathological simplify costs one timeout.
"""

from __future__ import annotations

import atexit
import functools
import json
import select
import subprocess
import sys
import threading
from pathlib import Path

WORKER = Path(__file__).with_name("symbolic_worker.py")


class SymbolicChecker:
    def __init__(self, timeout: float = 5.0, startup_timeout: float = 60.0):
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def equal(self, a: str, b: str) -> tuple[bool | None, str]:
        """(True/False, "") when decided; (None, why) when the worker failed or ran out of time."""
        with self._lock:
            proc = self._worker()
            try:
                proc.stdin.write(json.dumps({"a": a, "b": b}) + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                self.close()
                return None, "symbolic worker died"
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline() if ready else ""
            if not line:
                self.close()
                return None, f"symbolic check took longer than {self.timeout:g} s" if not ready else "worker died"
        reply = json.loads(line)
        if "error" in reply:
            return None, reply["error"]
        return reply["equal"], ""

    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, bufsize=1)
            ready, _, _ = select.select([self._proc.stdout], [], [], self.startup_timeout)
            if not ready or not self._proc.stdout.readline():
                self.close()
                raise RuntimeError(f"the symbolic worker ({WORKER}) did not start within {self.startup_timeout:g} s")
        return self._proc

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None


@functools.cache
def default_checker() -> SymbolicChecker:
    return SymbolicChecker()
