"""Every device module imports on its own, in a fresh interpreter: no import-order-dependent cycles.

A cycle (threshold -> detectors -> combined -> threshold) once made ``import edge_agent.learn.threshold`` fail while
the test suite, importing in another order, passed.
"""

import os
import pkgutil
import subprocess
import sys

import edge_agent

MODULES = sorted(m.name for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")
                 if not m.name.startswith("edge_agent.models"))


def test_each_device_module_imports_alone():
    script = "import importlib, sys; importlib.import_module(sys.argv[1])"
    failed = {}
    for name in MODULES:
        proc = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            failed[name] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    assert len(MODULES) > 20 and not failed, failed


def test_the_package_leaves_the_cores_to_the_interpreter():
    script = "import edge_agent, cv2, os; print(cv2.getNumThreads(), os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "EDGE_AGENT_OPENCV_THREADS")}
    default = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert default.stdout.split() == ["1", "1"]
    env.update(OPENBLAS_NUM_THREADS="2", EDGE_AGENT_OPENCV_THREADS="2")
    chosen = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert chosen.stdout.split() == ["2", "2"]  # an operator's setting wins
