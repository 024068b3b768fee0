"""A whole process's wall time and its own peak RSS, as an operator would see it (``make bench``, and the
tests that bound memory).

On Linux a child's peak-RSS counter (``ru_maxrss``) starts at its parent's size at fork, so a command
forked straight from a large process (pytest, the bench) would report at least that size whatever it
does itself. A minimal launcher (``python3 -S``, a few MB) forks and execs the command instead and
reports the child's ``ru_maxrss`` from ``wait4`` on its stderr.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_MARK = b"\n@@rss_kb="
_LAUNCHER = ("import os, sys\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    os.execvp(sys.argv[1], sys.argv[1:])\n"
             "_, status, usage = os.wait4(pid, 0)\n"
             "os.write(2, b'\\n@@rss_kb=%d\\n' % usage.ru_maxrss)\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float  # wall time, start-up included
    peak_rss_mb: float  # the command's own peak RSS (MiB)
    stdout: bytes
    stderr: bytes  # the command's, without the launcher's report


def run_measured(cmd: Sequence[str], env: Mapping[str, str], *, timeout: float | None = None,
                 cwd: Path | None = None) -> Measured:
    start = time.perf_counter()
    proc = subprocess.run(["python3", "-S", "-c", _LAUNCHER, *cmd], env=dict(env), capture_output=True,
                          timeout=timeout, cwd=cwd)
    elapsed = time.perf_counter() - start
    stderr, _, report = proc.stderr.rpartition(_MARK)
    if not report:
        raise RuntimeError(f"the launcher reported no peak RSS for {cmd[0]} (exit {proc.returncode}):"
                           f" {proc.stderr[-2000:].decode(errors='replace')}")
    return Measured(proc.returncode, elapsed, int(report.split()[0]) / 1024, proc.stdout, stderr)
