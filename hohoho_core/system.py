"""What the machine offers this process: the one place that counts usable CPU cores."""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on (at least 1).

    The affinity mask, not ``os.cpu_count()``: under ``taskset``, a container's cpuset or a
    batch scheduler the machine's core count overstates what we get, and sizing thread or
    worker pools by it oversubscribes the cores we do have.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
