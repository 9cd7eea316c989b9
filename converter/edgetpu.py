"""Compile a full-integer model for the Coral Edge TPU with Google's ``edgetpu_compiler``.

Why optional: the compiler exists only for x86-64 Linux from Coral's apt repository, not from PyPI; the
plain int8 model still runs everywhere, and the agent uses whichever file the manifest lists.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

COMPILER = "edgetpu_compiler"
HOW_TO_GET = (
    "edgetpu_compiler not found: on an x86-64 Debian/Ubuntu workstation add Coral's apt repository "
    "(https://coral.ai/docs/edgetpu/compiler/) and run 'apt-get install edgetpu-compiler', then retry"
)


class EdgeTPUError(RuntimeError):
    """The Edge TPU compiler is missing or failed."""


def require_compiler() -> str:
    path = shutil.which(COMPILER)
    if path is None:
        raise EdgeTPUError(HOW_TO_GET)
    return path


def compile_model(int8_model: Path, out_dir: Path) -> Path:
    """Run the compiler; returns the ``*_edgetpu.tflite`` it wrote and logs how many ops it mapped."""
    compiler = require_compiler()
    log.info("compiling %s for the Edge TPU", int8_model.name)
    proc = subprocess.run([compiler, "-s", "-o", str(out_dir), str(int8_model)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeTPUError(f"edgetpu_compiler failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    log.info("%s", proc.stdout.strip())
    compiled = out_dir / f"{int8_model.stem}_edgetpu.tflite"
    if not compiled.is_file():
        raise EdgeTPUError(f"edgetpu_compiler did not write {compiled.name}")
    return compiled
