"""Try an accelerator delegate in a child process before the agent loads it into its own.

Why: a libedgetpu built for another TensorFlow Lite than the interpreter (or a broken GPU driver) does not raise,
it kills the process with SIGSEGV inside ``load_delegate`` or the first ``invoke``. In the agent that ends the
inspection, and ``auto`` never gets to try the next delegate. A child that loads the delegate into the same
interpreter module, builds the interpreter on the same model and runs it once turns such a crash, or a hang on a
device that does not answer, into a reason the agent logs before it falls back. Nothing is cached across starts:
a probe costs one Python start and import (about a second on a Pi) per accelerator tried, when the model loads.

Child side: ``python -m edge_agent.embed.runtime.probe MODULE DELEGATE MODEL [--threads N] [--edgetpu-device D]``
exits 0 when the model ran once, else 1 with the reason as the last line of its stdout.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from edge_agent.embed.runtime.interpreter import runtime_version
from edge_agent.embed.runtime.load import ACCELERATORS, DelegateError, open_on

PROBE_TIMEOUT_S = 60.0  # Python start, imports, and the Edge TPU's first invoke (firmware and model upload)


def probe_delegate(module: ModuleType, delegate: str, model_path: Path, threads: int,
                   edgetpu_device: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``delegate`` ran the model once in a child process on ``module``; otherwise why it did not."""
    command = [sys.executable, "-m", __name__, module.__name__, delegate, str(model_path), "--threads", str(threads)]
    if edgetpu_device:
        command += ["--edgetpu-device", edgetpu_device]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:g} s (killed)"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        reason = f"crashed with {_signal_name(-done.returncode)}"
        if delegate == "edgetpu":
            reason += (f" (libedgetpu was most likely built for another TensorFlow Lite than "
                       f"{runtime_version(module)}; see docs/coral.md)")
        return reason
    lines = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}").splitlines()
    return f"failed: {lines[-1]}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def main(argv: list[str] | None = None) -> int:
    """The child: load, allocate, invoke once; the reason of a failure on stdout, which the parent reads."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.embed.runtime.probe", description=__doc__)
    parser.add_argument("module", help="interpreter module, e.g. tflite_runtime.interpreter")
    parser.add_argument("delegate", choices=ACCELERATORS)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--edgetpu-device")
    args = parser.parse_args(argv)
    try:
        interpreter = open_on(importlib.import_module(args.module), args.delegate, args.model, args.threads,
                              args.edgetpu_device)
        interpreter.invoke()
    except Exception as exc:  # any failure is the answer; the parent logs it and falls back
        print(exc if isinstance(exc, DelegateError) else f"{exc.__class__.__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
