"""The sandbox contains hostile programs: each test runs one and checks both the run's outcome and that the
host (files, processes, this test process, the network) is unharmed."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from qwen25.verify import sandbox
from qwen25.verify.sandbox import Language, Limits, Program, detect_isolation, run_many, run_program

FAST = Limits(cpu_seconds=2, wall_seconds=5)


def _py(source: str, **kwargs) -> Program:
    return Program(textwrap.dedent(source), **kwargs)


def _processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_isolation_is_namespaces_here():
    # This machine allows namespaces; if it ever stops, every other test here would test much less.
    assert detect_isolation() in ("root", "userns")


def test_hello_stdin_args_and_files():
    r = run_program(_py("""
        import sys, pathlib
        data = sys.stdin.read()
        print(data.upper(), sys.argv[1:], pathlib.Path('data/in.txt').read_text())
    """, stdin="hello", args=("a", "b"), files={"data/in.txt": "extra"}))
    assert r.status == "ok", r
    assert r.stdout == "HELLO ['a', 'b'] extra\n"
    assert r.exit_code == 0 and r.wall_seconds > 0


def test_large_stdin_is_fed_without_deadlock():
    text = "x" * (3 * 1024 * 1024)
    r = run_program(_py("import sys; print(len(sys.stdin.read()))", stdin=text))
    assert r.status == "ok" and r.stdout.strip() == str(len(text))


def test_program_that_never_reads_its_stdin_still_times_out():
    start = time.monotonic()
    r = run_program(_py("import sys, time; sys.stdin.buffer.read1(5000); time.sleep(60)", stdin="x" * (4 * 1024 * 1024),
                        limits=Limits(wall_seconds=1)))
    assert r.status == "timeout" and time.monotonic() - start < 4


def test_exit_code_and_exception_are_errors():
    r = run_program(_py("import sys; sys.exit(3)"))
    assert (r.status, r.exit_code) == ("error", 3)
    r = run_program(_py("raise ValueError('boom')"))
    assert r.status == "error" and "ValueError: boom" in r.stderr


def test_infinite_loop_hits_cpu_limit():
    start = time.monotonic()
    r = run_program(_py("while True: pass", limits=Limits(cpu_seconds=1, wall_seconds=10)))
    assert r.status == "timeout" and "CPU" in r.reason
    assert r.cpu_seconds >= 0.9 and time.monotonic() - start < 6


def test_sleeping_program_hits_wall_limit():
    start = time.monotonic()
    r = run_program(_py("import time; time.sleep(60)", limits=Limits(wall_seconds=1)))
    assert r.status == "timeout" and "wall" in r.reason
    assert time.monotonic() - start < 4


def test_program_ignoring_sigterm_is_killed_with_all_children():
    token = secrets.token_hex(8)
    start = time.monotonic()
    r = run_program(_py("""
        import os, signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if os.fork() == 0:
            os.setsid()  # try to leave the process group
            while True:
                time.sleep(0.1)
        while True:
            time.sleep(0.1)
    """, args=(token,), limits=Limits(wall_seconds=1.5)))
    assert r.status == "timeout"
    assert time.monotonic() - start < 5
    time.sleep(0.2)
    assert _processes_with(token) == []


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    token = secrets.token_hex(8)
    r = run_program(_py("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, args=(token,), limits=Limits(cpu_seconds=2, wall_seconds=3, max_processes=16)))
    assert r.status == "timeout"
    time.sleep(0.2)
    assert _processes_with(token) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_process_limit_counts_the_programs_processes():
    r = run_program(_py("""
        import os, time, json
        started = 0
        try:
            while started < 100:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                started += 1
        except OSError as e:
            print(json.dumps({"started": started, "error": e.errno}))
    """, limits=Limits(max_processes=8, wall_seconds=5)))
    out = _last_json(r.stdout)
    assert out["started"] < 8 and out["error"] == 11  # EAGAIN


def test_memory_hog_fails_allocation():
    r = run_program(_py("x = bytearray(8 * 1024**3)", limits=Limits(memory_bytes=512 << 20)))
    assert r.status == "error" and "MemoryError" in r.stderr


def test_memory_spread_over_processes_is_caught_by_init():
    r = run_program(_py("""
        import os, time
        for _ in range(6):
            if os.fork() == 0:
                block = bytearray(200 * 1024**2)  # each process stays under its own address-space limit
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(10)
                os._exit(0)
        time.sleep(10)
    """, limits=Limits(memory_bytes=512 << 20, wall_seconds=8)))
    assert r.status == "memory_limit", r
    assert r.wall_seconds < 7


def test_huge_output_is_capped_and_stopped():
    limits = Limits(output_bytes=64 * 1024, wall_seconds=10)
    r = run_program(_py("while True: print('x' * 1000)", limits=limits))
    assert r.status == "output_limit" and "stdout" in r.reason
    assert len(r.stdout) == 64 * 1024 and r.wall_seconds < 5
    r = run_program(_py("import sys\nwhile True: sys.stderr.write('y' * 1000)", limits=limits))
    assert r.status == "output_limit" and len(r.stderr) == 64 * 1024


def test_huge_file_hits_file_size_limit():
    r = run_program(_py("open('big', 'wb').write(b'0' * (64 * 1024**2))", limits=Limits(file_size_bytes=1 << 20)))
    assert r.status == "error" and "File too large" in r.stderr


def test_writing_outside_the_working_directory_fails_and_workdir_is_removed(tmp_path):
    name = f"qwen25-escape-{secrets.token_hex(6)}"
    targets = [tmp_path / name, Path("/tmp") / name, Path("/dev/shm") / name, Path("/root") / name,
               Path(__file__).parent / name, Path("/var/tmp") / name]
    tmp_path.chmod(0o777)  # even a world-writable host directory stays untouched
    before = set(Path(tempfile.gettempdir()).glob("qwen25-sandbox-*"))
    r = run_program(_py(f"""
        import json, os, ctypes
        results = {{}}
        for target in {[str(t) for t in targets]!r}:
            try:
                with open(target, "w") as f:
                    f.write("escaped")
                results[target] = "written"
            except OSError as e:
                results[target] = e.strerror
        libc = ctypes.CDLL(None, use_errno=True)
        results["remount"] = libc.mount(None, b"/", None, 32 | 4096, None)  # MS_REMOUNT|MS_BIND, read-write
        open("inside.txt", "w").write("fine")
        results["cwd"] = os.getcwd()
        results["inside"] = open("inside.txt").read()
        print(json.dumps(results))
    """))
    out = _last_json(r.stdout)
    for target in targets:
        assert out[str(target)] != "written" and not target.exists()
    assert out["remount"] != 0
    assert out["inside"] == "fine" and out["cwd"] == "/tmp/sandbox"
    assert set(Path(tempfile.gettempdir()).glob("qwen25-sandbox-*")) <= before  # the host directory is gone


def test_parent_environment_is_not_visible(monkeypatch):
    secret = f"secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("QWEN25_TEST_SECRET", secret)
    r = run_program(_py(f"""
        import os
        print(dict(os.environ))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
                except OSError as e:
                    print(pid, e)
        for pid in (1, {os.getpid()}):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print(e)
    """))
    assert r.status == "ok"
    assert secret not in r.stdout and "QWEN25_TEST_SECRET" not in r.stdout


def test_network_connections_fail():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        r = run_program(_py(f"""
            import json, socket
            out = {{}}
            for name, addr in (("local", ("127.0.0.1", {port})), ("remote", ("1.1.1.1", 53))):
                try:
                    socket.create_connection(addr, timeout=2).close()
                    out[name] = "connected"
                except OSError as e:
                    out[name] = str(e)
            try:
                out["dns"] = str(socket.getaddrinfo("example.com", 80))
            except OSError as e:
                out["dns"] = "failed: " + str(e)
            try:
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", {port}))
                out["udp"] = "sent"
            except OSError as e:
                out["udp"] = str(e)
            print(json.dumps(out))
        """))
        out = _last_json(r.stdout)
        assert out["local"] != "connected" and out["remote"] != "connected"
        assert out["dns"].startswith("failed") and out["udp"] != "sent"
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_killing_the_parent_and_host_processes_fails():
    sentinel = subprocess.Popen(["sleep", "30"])
    try:
        r = run_program(_py(f"""
            import json, os, signal
            out = {{}}
            for name, pid in (("test", {os.getpid()}), ("sentinel", {sentinel.pid}), ("ppid", os.getppid())):
                try:
                    os.kill(pid, signal.SIGKILL)
                    out[name] = "sent"
                except OSError as e:
                    out[name] = e.strerror
            try:
                os.killpg({os.getpgrp()}, signal.SIGKILL)
                out["group"] = "sent"
            except OSError as e:
                out["group"] = e.strerror
            try:
                os.kill(-1, signal.SIGKILL)  # everything this program may signal (Linux skips the caller)
                out["all"] = "sent"
            except OSError as e:
                out["all"] = e.strerror
            print(json.dumps(out))
        """))
        out = _last_json(r.stdout)
        assert "sent" not in (out["test"], out["sentinel"], out["group"])
        assert out["ppid"] != "sent" and out["all"] == "No such process"
        assert r.status == "ok"
        assert sentinel.poll() is None
    finally:
        sentinel.kill()
        sentinel.wait()


def test_runs_as_unprivileged_user_without_capabilities():
    r = run_program(_py("""
        import os
        print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])
    """))
    uid, caps = r.stdout.split()
    assert int(caps, 16) == 0
    if os.geteuid() == 0:
        assert int(uid) != 0


def test_other_languages():
    c = run_program(Program('#include <stdio.h>\nint main(){int x; scanf("%d",&x); printf("%d\\n", x*2);}',
                            language="c", stdin="21"))
    assert (c.status, c.stdout) == ("ok", "42\n"), c
    bad = run_program(Program("int main( {", language="c"))
    assert bad.status == "compile_error" and "error" in bad.stderr
    js = run_program(Program("console.log([1,2,3].map(x => x * 2).join(','))", language="javascript"))
    assert (js.status, js.stdout) == ("ok", "2,4,6\n"), js
    sh = run_program(Program("echo $((6 * 7)); exec 3<>/dev/tcp/1.1.1.1/53 && echo connected", language="bash"))
    assert sh.stdout.splitlines() == ["42"] and sh.status == "error"


def test_c_infinite_loop_and_js_memory_are_contained():
    r = run_program(Program("int main(){volatile long i=0; for(;;) i++;}", language="c",
                            limits=Limits(cpu_seconds=1, wall_seconds=10)))
    assert r.status == "timeout"
    r = run_program(Program("const a = []; for (;;) a.push(new Array(1e6).fill(1));", language="javascript",
                            limits=Limits(wall_seconds=20)))
    assert r.status in ("error", "memory_limit") and r.wall_seconds < 20


def test_run_many_keeps_order_and_bounds_parallelism():
    programs = [_py(f"import time; time.sleep(0.3); print({i})") for i in range(6)]
    start = time.monotonic()
    results = run_many(programs, workers=3)
    elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert elapsed >= 0.6  # two waves of three


def test_isolation_none_still_blocks_python_network_and_spawning(monkeypatch):
    if os.geteuid() == 0:  # without a mount namespace the unprivileged uid cannot reach a venv under /root
        monkeypatch.setitem(sandbox.LANGUAGES, "python", Language("main.py", ("/usr/bin/python3", "-I", "-B", "main.py")))
    r = run_program(_py("""
        import socket, subprocess, os
        for attempt in (lambda: socket.create_connection(("1.1.1.1", 53), timeout=1),
                        lambda: subprocess.run(["true"]), lambda: os.fork()):
            try:
                attempt()
                print("allowed")
            except PermissionError as e:
                print("blocked:", e)
        print(len(os.environ), os.environ.get("HOME") == os.getcwd())
    """), isolation="none")
    lines = r.stdout.splitlines()
    assert r.isolation == "none" and len(lines) == 4, r
    assert all(line.startswith("blocked") for line in lines[:3]), lines
    assert lines[3].endswith("True")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
                    reason="needs root to become an unprivileged user, setpriv and /usr/bin/python3")
def test_unprivileged_user_gets_user_namespace_isolation():
    # sandbox.py uses only the standard library: load it by path under the system Python as nobody.
    tmp_path = Path(tempfile.mkdtemp(prefix="qwen25-test-"))  # pytest's tmp_path is private to root
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("sandbox", {str(Path(__file__).parents[1] /
                                                                         "qwen25/verify/sandbox.py")!r})
        sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sandbox)
        level = sandbox.detect_isolation()
        r = sandbox.run_program(sandbox.Program(
            "import socket\\ntry:\\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\\n"
            "except OSError as e:\\n    print('blocked', e.errno)\\n"
            "try:\\n    open('/tmp/{tmp_path.name}-escape', 'w')\\nexcept OSError as e:\\n    print('ro', e.errno)"))
        print(json.dumps({{"level": level, "status": r.status, "stdout": r.stdout, "stderr": r.stderr}}))
    """))
    tmp_path.chmod(0o755)
    script.chmod(0o644)
    try:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                               str(script)], capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(tmp_path)
    out = _last_json(proc.stdout)
    assert out["level"] == "userns", (out, proc.stderr)
    assert out["status"] == "ok" and "blocked 101" in out["stdout"] and "ro 30" in out["stdout"], out
    assert not Path(f"/tmp/{tmp_path.name}-escape").exists()
