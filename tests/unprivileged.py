"""Run a command without the power to ignore file permissions, so read-only and unreadable
files behave for it as they do for any user (tests may run as root, which reads and
writes everything: permission bits alone would then prove nothing)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import Any

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_override() -> None:
    # Dropped from the bounding set, the capabilities are gone from the program run next.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_unprivileged(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` of ``python -m divconq.cli ARGS`` obeying file permissions.

    Skips the calling test where root cannot give up the override (no CAP_SETPCAP in a
    container): the permission bits would then prove nothing.
    """
    import pytest

    preexec = _drop_file_override if os.geteuid() == 0 else None
    try:
        return subprocess.run([sys.executable, "-m", "divconq.cli", *args], capture_output=True, text=True,
                              timeout=300, preexec_fn=preexec, **kwargs)
    except subprocess.SubprocessError as exc:
        if "preexec_fn" not in str(exc):
            raise
        pytest.skip(f"cannot drop the file-permission override here ({exc})")
