"""Run model-written programs: a fresh process tree per run, limited, offline, in a temporary directory.

Each run goes through `sandbox_init.py` (see its docstring for the process tree). What contains a run:

- namespaces (isolation "root" when we are root, "userns" through an unprivileged user namespace otherwise):
  a network namespace with no interface up (no connection leaves, not even to localhost); a pid namespace
  whose init is ours (the program sees no host process, and everything it starts dies with the run); a
  mount namespace where every filesystem is read-only except the working directory, which the program sees
  at /tmp/sandbox on a private /tmp (the same path every run, so tracebacks are reproducible);
- as root, the program runs as a fresh random uid (no capabilities, no access to root's files, and an
  RLIMIT_NPROC of its own, since the kernel exempts root from that limit);
- rlimits on CPU time, address space, processes/threads, file size and open files; init also sums the
  resident memory of the whole sandbox and kills it above `memory_bytes` (a fork of memory hogs is caught);
- a wall-clock timeout that SIGKILLs the launcher's process group (the program cannot ignore it);
- an empty environment (HOME and TMPDIR are the working directory; the host directory behind it is removed
  afterwards);
- stdout/stderr read up to `output_bytes` each; beyond that the run is killed.

Isolation "none" (no namespaces available) keeps the rlimits, the uid drop as root, the environment and the
timeouts, and blocks sockets and process spawning in Python programs with an audit hook (best effort: native
code can bypass it). `isolation()` says which level this machine gives and, when it is "none", why.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

LAUNCHER = Path(__file__).with_name("sandbox_init.py")
SANDBOX_DIR = "/tmp/sandbox"  # the working directory as programs see it (sandbox_init.SANDBOX_DIR)
SETUP_FAILED = 125
_MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 10.0  # RLIMIT_CPU has whole seconds: rounded up
    wall_seconds: float = 20.0
    memory_bytes: int = 1024 * _MIB  # address space of each process, and resident memory of all together
    max_processes: int = 32  # processes and threads of the program
    file_size_bytes: int = 16 * _MIB
    open_files: int = 64
    output_bytes: int = 1 * _MIB  # per stream

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_processes", "file_size_bytes",
                     "open_files", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Language:
    source_name: str
    run: tuple[str, ...]  # argv; the first word is looked up on PATH
    compile: tuple[str, ...] | None = None


LANGUAGES = {
    "python": Language("main.py", (sys.executable, "-I", "-B", "main.py")),
    "c": Language("main.c", ("./main",), ("gcc", "-O2", "-std=gnu17", "-o", "main", "main.c", "-lm")),
    "cpp": Language("main.cpp", ("./main",), ("g++", "-O2", "-std=gnu++17", "-o", "main", "main.cpp")),
    "javascript": Language("main.js", ("node", "main.js")),
    "bash": Language("main.sh", ("bash", "main.sh")),
}

# The run's end, from the program's point of view: "ok" (exit 0), "error" (non-zero exit or a fatal signal),
# "timeout" (wall or CPU limit), "memory_limit", "output_limit", "compile_error", "sandbox_error" (the
# sandbox itself could not be built; nothing ran).
STATUSES = ("ok", "error", "timeout", "memory_limit", "output_limit", "compile_error", "sandbox_error")


@dataclass
class Program:
    source: str
    language: str = "python"
    stdin: str = ""
    args: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # extra files in the working directory
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"Program.language: unknown language {self.language!r}; "
                             f"known: {', '.join(sorted(LANGUAGES))}")
        for name in self.files:
            if name.startswith("/") or ".." in Path(name).parts or not name:
                raise ValueError(f"Program.files: {name!r} must be a relative path inside the working directory")


@dataclass
class RunResult:
    status: str
    reason: str  # one line for humans: why the status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_program(program: Program, isolation: str | None = None) -> RunResult:
    """Compile (if the language needs it) and run one program; the working directory is removed after."""
    level = isolation or detect_isolation()
    if level not in ("root", "userns", "none"):
        raise ValueError(f"isolation must be 'root', 'userns' or 'none', got {level!r}")
    lang = LANGUAGES[program.language]
    uid = _fresh_uid() if os.geteuid() == 0 else None
    workdir = _make_workdir({**program.files, lang.source_name: program.source}, uid)
    try:
        if lang.compile:
            built = _execute(_resolve(lang.compile), workdir, "", program.limits, level, uid)
            if built.status != "ok":
                if built.status in ("error", "timeout", "memory_limit", "output_limit"):
                    built.reason = f"compile step: {built.reason}"
                    built.status = "compile_error"
                return built
        run = _resolve(lang.run)
        if level == "none" and program.language == "python":
            run = [run[0], "-I", "-B", "-c", _PYTHON_GUARD, lang.source_name]
        return _execute(run + list(program.args), workdir, program.stdin, program.limits, level, uid)
    finally:
        shutil.rmtree(workdir, onerror=_force_remove)


def run_many(programs: Iterable[Program], workers: int | None = None, isolation: str | None = None) -> list[RunResult]:
    """Run programs in parallel, at most `workers` at a time (default: CPU count); results in input order."""
    programs = list(programs)
    level = isolation or detect_isolation()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(functools.partial(run_program, isolation=level), programs))


@functools.cache
def detect_isolation() -> str:
    """The strongest isolation this machine gives, found by starting an empty sandbox once per process."""
    candidate = "root" if os.geteuid() == 0 else "userns"
    uid = _fresh_uid() if os.geteuid() == 0 else None
    workdir = _make_workdir({}, uid)
    try:
        probe = _execute(_resolve(("true",)), workdir, "", Limits(), candidate, uid)
    finally:
        shutil.rmtree(workdir, onerror=_force_remove)
    if probe.status == "ok":
        return candidate
    warnings.warn(f"qwen25 sandbox: no namespaces ({probe.reason}); running programs with rlimits only "
                  "(isolation 'none': no network or filesystem isolation for non-Python programs)", stacklevel=2)
    return "none"


def _make_workdir(files: dict[str, str], uid: int | None) -> Path:
    """A fresh directory with the program's files, owned by the uid the program will run as."""
    workdir = Path(tempfile.mkdtemp(prefix="qwen25-sandbox-"))
    for name, text in files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if uid is not None:
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, uid, uid)
    return workdir


def _execute(argv: list[str], workdir: Path, stdin: str, limits: Limits, isolation: str,
             uid: int | None) -> RunResult:
    """One process tree through the launcher; the caller owns the working directory."""
    status_r, status_w = os.pipe()
    home = SANDBOX_DIR if isolation != "none" else str(workdir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    expose = []
    if uid is not None:  # the interpreter's prefixes and the program's install prefix, maybe under /root
        prefixes = {sys.prefix, sys.base_prefix}
        if os.path.isabs(argv[0]):
            prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(argv[0]))))
        expose = sorted({os.path.realpath(p) for p in prefixes} - {"/"})
    cfg = {"argv": argv, "env": env, "workdir": str(workdir), "isolation": isolation, "uid": uid, "gid": uid,
           "expose": expose, "status_fd": status_w, "parent_pid": os.getpid(),
           "limits": {"cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
                      "max_processes": limits.max_processes, "file_size_bytes": limits.file_size_bytes,
                      "open_files": limits.open_files}}
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,), env={},
                                cwd="/", start_new_session=True)
    finally:
        os.close(status_w)
    try:
        out, err, stopped = _communicate(proc, stdin.encode(), limits)
        report = _read_status(status_r)
    finally:
        os.close(status_r)
    result = RunResult(status="", reason="", stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                       wall_seconds=time.monotonic() - start, cpu_seconds=report.get("cpu_seconds", 0.0),
                       peak_memory_bytes=report.get("peak_rss_bytes", 0), isolation=isolation)
    result.status, result.reason = _classify(report, stopped, limits, isolation)
    result.exit_code = report.get("exit_code")
    result.signal = report.get("signal")
    return result


def _communicate(proc: subprocess.Popen, stdin: bytes, limits: Limits) -> tuple[bytes, bytes, str | None]:
    """Feed stdin, read both streams up to the cap; kill the process group on a cap or the wall deadline."""
    deadline = time.monotonic() + limits.wall_seconds
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    names = {proc.stdout: "stdout", proc.stderr: "stderr"}
    stopped = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        if stdin:
            os.set_blocking(proc.stdin.fileno(), False)  # a program that never reads must not block us
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sent = 0
        while sel.get_map() and stopped is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped = "wall"
                break
            for key, _ in sel.select(timeout=remaining):
                stream = key.fileobj
                if stream is proc.stdin:
                    try:
                        sent += os.write(stream.fileno(), stdin[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        sent = len(stdin)
                    if sent >= len(stdin):
                        sel.unregister(stream)
                        stream.close()
                    continue
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    sel.unregister(stream)
                    continue
                buf = buffers[stream]
                buf += chunk
                if len(buf) > limits.output_bytes:
                    del buf[limits.output_bytes:]
                    stopped = names[stream]
                    break
    if stopped is not None:
        _kill_group(proc)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    except subprocess.TimeoutExpired:  # streams closed but the launcher still runs: past the deadline
        stopped = stopped or "wall"
        _kill_group(proc)
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if not stream.closed:
            stream.close()
    return bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr]), stopped


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher is a session leader: its group is the sandbox
    except ProcessLookupError:
        pass


def _read_status(fd: int) -> dict:
    """Init's one-line report; empty when the sandbox was killed before it could write one."""
    data = b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.select(timeout=2.0):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        sel.close()
    line = data.decode(errors="replace").strip().splitlines()
    return json.loads(line[-1]) if line else {}


def _classify(report: dict, stopped: str | None, limits: Limits, isolation: str) -> tuple[str, str]:
    if stopped == "wall":
        return "timeout", f"wall time limit of {limits.wall_seconds:g} s"
    if stopped in ("stdout", "stderr"):
        return "output_limit", f"{stopped} exceeded {limits.output_bytes} bytes"
    if "setup_error" in report:
        return "sandbox_error", f"sandbox setup failed: {report['setup_error']}"
    if "exec_error" in report:
        hint = ""
        if "Permission denied" in report["exec_error"] and isolation == "none":
            hint = (" (as root the program runs as an unprivileged uid; without a mount namespace to expose it, "
                    "the interpreter must be reachable by any user)")
        return "sandbox_error", f"could not start the program: {report['exec_error']}{hint}"
    if report.get("over_memory"):
        return "memory_limit", f"resident memory exceeded {limits.memory_bytes} bytes"
    if "signal" in report:
        sig = report["signal"]
        # SIGXCPU is the CPU soft limit; SIGKILL the hard one a second later (if SIGXCPU was ignored).
        # rusage is sampled at ticks and can read a little under the limit.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and report.get("cpu_seconds", 0) >= 0.9 * limits.cpu_seconds):
            return "timeout", f"CPU time limit of {limits.cpu_seconds:g} s"
        if sig == signal.SIGXFSZ:
            return "error", f"file size limit of {limits.file_size_bytes} bytes"
        return "error", f"killed by signal {signal.Signals(sig).name}"
    if "exit_code" in report:
        code = report["exit_code"]
        return ("ok", "exit code 0") if code == 0 else ("error", f"exit code {code}")
    return "sandbox_error", "the sandbox ended without a report"


def _resolve(argv: tuple[str, ...]) -> list[str]:
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path="/usr/local/bin:/usr/bin:/bin")
    if exe is None:
        raise FileNotFoundError(f"sandbox: {argv[0]!r} is not installed (looked in /usr/local/bin:/usr/bin:/bin)")
    return [exe, *argv[1:]]


def _fresh_uid() -> int:
    """A uid no one uses, so RLIMIT_NPROC and kill permissions see only this run's processes."""
    return 1_000_000 + secrets.randbelow(1_000_000_000)


def _force_remove(func, path, exc_info) -> None:
    """rmtree's error hook: the program may have removed permissions from what it made."""
    parent = os.path.dirname(path)
    os.chmod(parent, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
    func(path)


# Isolation "none" only: Python programs start under this audit hook, which refuses sockets other than
# AF_UNIX, starting other programs and loading native libraries through ctypes.
_PYTHON_GUARD = r"""
import sys, runpy
def _guard(event, args):
    if event == "socket.__new__" and args[1] != 1:
        raise PermissionError("network access is disabled in the sandbox")
    if event == "socket.getaddrinfo":
        raise PermissionError("network access is disabled in the sandbox")
    if event in ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "ctypes.dlopen",
                 "os.fork", "os.forkpty"):
        raise PermissionError(f"{event} is disabled in the sandbox")
sys.addaudithook(_guard)
sys.argv = sys.argv[1:]
sys.path[0] = ""
runpy.run_path(sys.argv[0], run_name="__main__")
"""
