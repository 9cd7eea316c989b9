"""Timing and memory helpers shared by the benchmark scripts.

Every benchmark imports this module before anything that loads numpy: importing it applies the agent's thread
limits (``limit_threads``), as ``edge-agent`` does at its start, so the figures are the agent's own.
"""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # before numpy loads: OpenBLAS reads its thread count once

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from edge_agent.capture.images import list_images, read_folder, read_image  # noqa: E402
from edge_agent.embed.features import FeatureExtractor  # noqa: E402

N_TRAIN = 10  # the few-shot fit every benchmark measures: N=10 good images


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


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="frames to judge")
    p.add_argument("--train", type=Path, required=True, help="good images; the first 10 are fitted on")


def load_images(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, the 10 training images). Only what is fitted is read, so peak RSS stays the process's own work."""
    _, images = read_folder(args.images)
    return images, [read_image(p) for p in list_images(args.train)[:N_TRAIN]]


def model_bench(repeat: int) -> tuple[argparse.Namespace, FeatureExtractor, list[np.ndarray], list[np.ndarray]]:
    """The command line of a benchmark on one converted model (MODEL --images --train --repeat): its arguments,
    the model on CPU with 2 threads (the agent's default), the frames and the 10 training images."""
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    add_image_args(p)
    p.add_argument("--repeat", type=int, default=repeat)
    args = p.parse_args()
    return (args, FeatureExtractor(args.model, "cpu", 2), *load_images(args))


def percentile(values: list[float], q: float) -> float:
    """The observed value at quantile ``q`` (nearest rank): never beyond the largest one measured, unlike an
    interpolating estimate from few samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
