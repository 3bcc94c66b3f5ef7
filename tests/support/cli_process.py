"""Run the `dorl` command line in a child process, as a user without root's right to read anything.

File permissions only bite a process that lacks CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH;
root (CI containers often run as root) has both. The child drops them from its capability
bounding set before it starts, so a `chmod 000` file is unreadable to it as it is to a lab's
service user.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
DORL = [sys.executable, "-c", "from dorl.cli import main; main()"]


def _as_plain_user() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "400"
    return env


def run_dorl(*args: Any, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    """Run `dorl ARGS...` to completion; stdout and stderr are bytes (file names need not be UTF-8)."""
    return subprocess.run([*DORL, *map(os.fsdecode, args)], capture_output=True, timeout=timeout, check=False,
                          env=_env(), preexec_fn=_as_plain_user)


def start_dorl(*args: Any) -> subprocess.Popen[bytes]:
    """Start `dorl ARGS...` with piped stdout and stderr."""
    return subprocess.Popen([*DORL, *map(os.fsdecode, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), preexec_fn=_as_plain_user)  # noqa: PLW1509  (prctl only)
