"""What the machine is: the CPU model that measured choices (decode kernels, the matmul peak behind MFU) and
every benchmark figure are keyed by, since a figure from one CPU says little about another."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
