"""Every entry point besides edge-agent applies the agent's thread limits before numpy loads, so what edge-convert
and the benchmarks measure or do runs under the same OpenBLAS and OpenCV limits as the agent (docs/performance.md)."""

import os
import subprocess
import sys

import pytest

ENTRY_POINTS = ["converter.cli", "converter.fidelity_check", "converter.calibration_set", "bench.common",
                "bench.invoke", "bench.agent", "bench.b4_frame", "bench.patch_cost", "bench.paper_stack",
                "bench.rotated_set"]

# How many threads the OpenBLAS libraries the module loaded really run (read once, when each loads).
SCRIPT = """
import importlib, sys
importlib.import_module(sys.argv[1])
import cv2, threadpoolctl
blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
print(cv2.getNumThreads(), max(blas, default=1))
"""


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_limits_threads_before_numpy_loads(module):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "EDGE_AGENT_OPENCV_THREADS")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, module], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1"], (module, proc.stdout)
