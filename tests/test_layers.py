"""The folders follow the data flow: a role imports only the roles below it (docs/architecture.md).

Why a test: a lower role that loads a higher one (the feature extractor pulling in the detectors through the
configuration, say) makes every device module heavier to import and brings back the import cycles that the
layout removed. Each check runs in a fresh interpreter, so the order the suite imports things in cannot hide one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: module -> roles (and top-level modules) it must not load.
FORBIDDEN = {
    "edge_agent.system.atomic": {"capture", "embed", "learn", "deliver", "offline", "agent", "config"},
    "edge_agent.capture.folder": {"embed", "learn", "deliver", "offline", "agent", "config"},
    "edge_agent.capture.preprocess": {"embed", "learn", "deliver", "offline", "agent", "config"},
    "edge_agent.embed.features": {"learn", "deliver", "offline", "agent", "config"},
    "edge_agent.learn.fitting": {"capture", "deliver", "offline", "agent", "config"},
    "edge_agent.learn.detectors": {"capture", "deliver", "offline", "agent", "config"},
    "edge_agent.learn.store": {"capture", "deliver", "offline", "agent", "config"},
    "edge_agent.deliver.spool": {"capture", "embed", "learn", "offline", "agent", "config"},
    "edge_agent.deliver.sink": {"capture", "embed", "learn", "offline", "agent", "config"},
    "edge_agent.deliver.messages": {"capture", "embed", "learn", "offline", "agent", "config"},
}

SCRIPT = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted({m.split(".")[1] for m in sys.modules if m.startswith("edge_agent.")})))
"""


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_a_role_does_not_load_the_roles_above_it(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, module], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert module.split(".")[1] in loaded  # the check sees what it imports
    assert not loaded & FORBIDDEN[module], f"{module} loads {sorted(loaded & FORBIDDEN[module])}"
