"""The sandbox's launcher and init process, run by `qwen25.verify.sandbox` as
`python -I -S sandbox_init.py CONFIG_JSON`. Standard library only, so it starts in milliseconds.

Process tree (isolation "root" or "userns"):

    launcher  (host pid namespace; session leader, so the parent can kill its whole process group)
      unshare: mount, pid, network, ipc, uts namespaces (+ a user namespace when not root)
      mounts: everything read-only except the working directory
      init  (pid 1 of the new pid namespace; mounts a /proc that shows only the sandbox)
        program  (rlimits; as root: setuid to a fresh unprivileged uid; no_new_privs; execve)

When init exits the kernel kills every process left in its pid namespace, so nothing the program spawned
(setsid, double forks, daemons) outlives the run. With isolation "none" (no namespaces) init is a child
subreaper that kills the descendants it can find when the program ends.

Init writes one JSON line to the status pipe (fd `status_fd`): how the program ended and its CPU time, or
the setup step that failed. Nothing here writes to the program's stdout/stderr.
"""

import ctypes
import json
import os
import re
import resource
import signal
import socket
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
MOUNT_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                      "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
SETUP_FAILED = 125
SANDBOX_DIR = "/tmp/sandbox"  # where the program finds its working directory when namespaces are used
WATCH_INTERVAL = 0.05  # seconds between memory checks by init

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A step of building the sandbox failed: the program is not run."""


def _call(what: str, ret: int) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _call(f"mount {target}", libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)))


def _prctl(option: int, arg: int) -> None:
    _call(f"prctl {option}", libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0))


def _mountinfo() -> list[tuple[str, int]]:
    """(mount point, per-mount flags to keep) for every mount, parents before children."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
            flags = 0
            for option in fields[5].split(","):
                flags |= MOUNT_OPTION_FLAGS.get(option, 0)
            if "relatime" not in fields[5] and "noatime" not in fields[5]:
                flags |= MS_STRICTATIME
            mounts.append((point, flags))
    return mounts


def _traversable_by_others(path: str) -> bool:
    return bool(os.stat(path).st_mode & 0o001)


def _expose(paths: list[str], workdir: str) -> None:
    """Make `paths` reachable for an unprivileged uid although an ancestor (say /root, mode 700) is not:
    that ancestor is covered by a small tmpfs holding only the paths, bind-mounted from the host."""
    covers: dict[str, list[str]] = {}
    for path in paths:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not _traversable_by_others(ancestor):
                covers.setdefault(ancestor, []).append(path)
                break
    for n, (ancestor, inner) in enumerate(sorted(covers.items())):
        staged = []
        for k, path in enumerate(inner):
            stage = os.path.join(workdir, f".expose-{n}-{k}")
            os.mkdir(stage)
            _mount(path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(stage, path, None, MS_MOVE)
            os.rmdir(stage)


def _private_tmp(workdir: str, keep: list[str]) -> None:
    """A fresh tmpfs on /tmp with the working directory bound at SANDBOX_DIR: the program sees the same path in
    every run (so its tracebacks are reproducible) and nothing of the host's /tmp. Paths in `keep` that live
    under /tmp (an interpreter, say) are bound back at their own place."""
    sources = [(workdir, SANDBOX_DIR)] + [(p, p) for p in keep if p.startswith("/tmp/")]
    fds = [(os.open(source, os.O_PATH | os.O_DIRECTORY), target) for source, target in sources]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for fd, target in fds:  # the host paths are hidden now; the open descriptors still reach them
        os.makedirs(target, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)


def _enter_namespaces(cfg: dict) -> None:
    """Unshare the namespaces and make the filesystem read-only except the working directory."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if cfg["isolation"] == "userns":
        flags |= CLONE_NEWUSER
    _call("unshare", libc.unshare(flags))
    if cfg["isolation"] == "userns":  # keep our own ids inside: exec drops the namespace's capabilities
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    socket.sethostname("sandbox")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    workdir = cfg["workdir"]
    if cfg["expose"]:
        _expose(cfg["expose"], workdir)
    _private_tmp(workdir, cfg["expose"])
    for point, keep in _mountinfo():
        if point == SANDBOX_DIR:
            continue
        try:
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | keep)
        except SetupError:
            if os.path.exists(point) and not _is_readonly(point):
                raise
    if not _is_readonly("/"):
        raise SetupError("/ is still writable after remounting read-only")


def _is_readonly(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return True  # a mount we cannot even stat is not one the program can write to


def _count_user_threads(uid: int) -> int:
    """Threads owned by `uid` right now: RLIMIT_NPROC counts them all, not only the sandbox's."""
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                if int(status["Uid"].split()[0]) == uid:
                    total += int(status["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return total


def _exec_program(cfg: dict, err_w: int) -> None:
    """In the program's process: limits, identity, then execve. Never returns."""
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.set_inheritable(cfg["status_fd"], False)
        os.chdir(SANDBOX_DIR if cfg["isolation"] != "none" else cfg["workdir"])
        lim = cfg["limits"]
        nproc = lim["max_processes"] + cfg["threads_already_owned"]
        cpu = max(1, int(lim["cpu_seconds"] + 0.999))
        for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                           (resource.RLIMIT_AS, lim["memory_bytes"]),
                           (resource.RLIMIT_NPROC, nproc),
                           (resource.RLIMIT_FSIZE, lim["file_size_bytes"]),
                           (resource.RLIMIT_NOFILE, lim["open_files"]),
                           (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.umask(0o077)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:  # report any failure before exec to init, never run anything else
        os.write(err_w, f"{type(e).__name__}: {e}".encode()[:4000])
    os._exit(127)


def _resident_bytes_of_others() -> int:
    """Resident memory of every process in this pid namespace except init itself."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != "1":
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
    return total


def _kill_descendants() -> None:
    """Isolation "none": init is a child subreaper, so orphans come back to it; kill until none is left."""
    me = str(os.getpid())
    while True:
        found = False
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = f.read().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    found = True
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not found:
            return
        time.sleep(0.001)


def _init(cfg: dict, status: int) -> None:
    """Pid 1 of the sandbox: start the program, reap every process, watch memory, report how it ended."""
    namespaced = cfg["isolation"] != "none"
    if namespaced:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    err_r, err_w = os.pipe()  # close-on-exec: EOF means execve succeeded
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    program = os.fork()
    if program == 0:
        os.close(err_r)
        _exec_program(cfg, err_w)
    os.close(err_w)
    exec_error = b""
    while chunk := os.read(err_r, 4096):
        exec_error += chunk
    os.close(err_r)
    memory_limit = cfg["limits"]["memory_bytes"]
    peak, over_memory, wait_status = 0, False, None
    while wait_status is None:
        try:
            while True:
                pid, st = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == program:
                    wait_status = st
        except ChildProcessError:
            break
        if wait_status is not None:
            break
        if namespaced and not over_memory:
            used = _resident_bytes_of_others()
            peak = max(peak, used)
            if used > memory_limit:
                over_memory = True
                os.kill(-1, signal.SIGKILL)  # every process of the namespace but init
        signal.sigtimedwait([signal.SIGCHLD], WATCH_INTERVAL)
    if not namespaced:
        _kill_descendants()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {"cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": max(peak, usage.ru_maxrss * 1024),
              "over_memory": over_memory}
    if exec_error:
        report["exec_error"] = exec_error.decode(errors="replace")
    elif wait_status is not None and os.WIFSIGNALED(wait_status):
        report["signal"] = os.WTERMSIG(wait_status)
    elif wait_status is not None:
        report["exit_code"] = os.WEXITSTATUS(wait_status)
    os.write(status, (json.dumps(report) + "\n").encode())


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status = cfg["status_fd"]
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the parent died: so does the sandbox
        if os.getppid() != cfg["parent_pid"]:
            os._exit(SETUP_FAILED)
        # RLIMIT_NPROC counts every thread of the real uid; a fresh uid (as root) owns none yet.
        cfg["threads_already_owned"] = 0 if cfg["uid"] is not None else _count_user_threads(os.getuid())
        if cfg["isolation"] != "none":
            _enter_namespaces(cfg)
        init = os.fork()
        if init == 0:
            try:
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                _init(cfg, status)
            except BaseException as e:
                os.write(status, (json.dumps({"setup_error": f"{type(e).__name__}: {e}"}) + "\n").encode())
                os._exit(SETUP_FAILED)
            os._exit(0)
    except (SetupError, OSError) as e:
        os.write(status, (json.dumps({"setup_error": str(e)}) + "\n").encode())
        os._exit(SETUP_FAILED)
    os.close(status)
    _, st = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))


if __name__ == "__main__":
    main()
