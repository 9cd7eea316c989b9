"""Every device module imports on its own, in a fresh interpreter: no import-order-dependent cycles.

A cycle (threshold -> detectors -> combined -> threshold) once made ``import edge_agent.learn.threshold`` fail while
the test suite, importing in another order, passed. And importing the package changes nothing in the process
(thread limits are the entry points' to set).
"""

import json
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


# The thread limits (edge_agent.system.threads) belong to the entry points, not to ``import edge_agent``: importing a
# library must not change the process it is imported into. Each check runs in a fresh interpreter, without the
# limits' variables, and reports what it saw as JSON.
PROBE = """
import json, os, sys
import cv2
cv2.setNumThreads(3)  # a value no limit would give: shows whether an import touched the pool
for name in sys.argv[1:]:
    __import__(name)
import threadpoolctl
print(json.dumps({"opencv": cv2.getNumThreads(), "env": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "openblas": sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                                      if i["internal_api"] == "openblas"})}))
"""
ENTRY = """
import json, os
import edge_agent.cli  # first, as the edge-agent script does: before anything has loaded numpy
import cv2, threadpoolctl
print(json.dumps({"opencv": cv2.getNumThreads(), "env": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "openblas": sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                                      if i["internal_api"] == "openblas"})}))
"""
LIMITS = ("OPENBLAS_NUM_THREADS", "EDGE_AGENT_OPENCV_THREADS")


def _probe(script: str, *args: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in LIMITS}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env={**clean, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_leaves_the_threads_alone():
    seen = _probe(PROBE, "edge_agent", "edge_agent.learn.detectors", "edge_agent.config", "edge_agent.agent")
    assert seen["opencv"] == 3 and seen["env"] is None


def test_the_entry_point_leaves_the_cores_to_the_interpreter():
    seen = _probe(ENTRY)
    assert seen == {"opencv": 1, "env": "1", "openblas": [1]}  # set before numpy loaded, so OpenBLAS obeyed


def test_the_entry_point_limits_threads_even_after_the_libraries_loaded():
    seen = _probe(PROBE, "edge_agent.cli")
    assert seen["opencv"] == 1 and seen["env"] == "1"


def test_an_operators_thread_settings_win_over_the_entry_points():
    seen = _probe(ENTRY, OPENBLAS_NUM_THREADS="2", EDGE_AGENT_OPENCV_THREADS="3")
    assert seen["opencv"] == 3 and seen["env"] == "2"
    if (os.cpu_count() or 1) > 1:
        assert seen["openblas"] and 1 not in seen["openblas"]  # OpenBLAS took the operator's 2, not the limit


def test_the_edge_agent_command_applies_the_limits_at_its_start():
    """The installed script's entry point is edge_agent.cli:main, whose module sets the limits on import."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "edge-agent"]
    assert script.module == "edge_agent.cli"
    assert script.attr == "main"
