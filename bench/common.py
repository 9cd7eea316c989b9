"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 3) -> dict[str, float]:
    """min and median wall time in ms over ``repeat`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"min_ms": round(min(times), 3), "median_ms": round(statistics.median(times), 3)}


def proc_status(key: str) -> int:
    """A /proc/self/status field in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def emit(record: dict) -> None:
    """One JSON line on stdout: the orchestrator collects them."""
    print("BENCH " + json.dumps(record), flush=True)
