"""Choose the delegate a model runs on: CPU (XNNPACK), the GPU delegate or a Coral Edge TPU.

``auto`` tries Edge TPU, then GPU, then CPU. An explicit ``gpu`` or ``edgetpu`` that cannot be used falls back to
CPU too: a camera that runs unattended keeps inspecting, slower, rather than stopping on a missing library, an
unplugged stick or a libedgetpu that crashes its interpreter. Either way the log says why each delegate was
skipped (ERROR when an explicit request was not met) and the state message's ``delegate`` says what runs. An
accelerator is first tried in a child process (``probe``), so a crash in its native code is one of those reasons,
not the end of the agent. Only a model folder without the Edge TPU-compiled model fails an explicit ``edgetpu``:
that is a deployment mistake no fallback should hide.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_agent.embed.runtime.interpreter import interpreter_module, runtime_version
from edge_agent.embed.runtime.load import ACCELERATORS, DelegateError, open_on

log = logging.getLogger(__name__)

DELEGATES = ("cpu", "gpu", "edgetpu", "auto")
_NO_EDGETPU_MODEL = "the model folder has no Edge TPU-compiled model (edge-convert --edgetpu makes one)"
_PROBE = "edge_agent.embed.runtime.probe"
PROBE_TIMEOUT_S = 60.0  # Python start, imports, and the Edge TPU's first invoke (firmware and model upload)


def probe_delegate(module: ModuleType, delegate: str, model_path: Path, threads: int,
                   edgetpu_device: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``delegate`` ran the model once in a child process on ``module``; otherwise why it did not.

    Nothing is cached across starts: a probe costs one Python start and import (about a second on a Pi) per
    accelerator tried, when the model loads.
    """
    command = [sys.executable, "-m", _PROBE, module.__name__, delegate, str(model_path), "--threads", str(threads)]
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


@dataclass
class RuntimeHandle:
    interpreter: Any
    delegate: str  # the delegate actually in use
    model_path: Path


def _order(delegate: str) -> tuple[str, ...]:
    if delegate == "auto":
        return ("edgetpu", "gpu", "cpu")
    return (delegate, "cpu") if delegate in ACCELERATORS else (delegate,)


def open_interpreter(
    model_path: str | Path,
    delegate: str = "cpu",
    threads: int = 2,
    edgetpu_model_path: str | Path | None = None,
    edgetpu_device: str | None = None,
) -> RuntimeHandle:
    """An allocated interpreter on the requested delegate, or on CPU with the reason logged.

    The Edge TPU runs only a model compiled by ``edgetpu_compiler``; ``edgetpu_model_path`` names it, and
    without it ``edgetpu`` fails and ``auto`` skips it. ``edgetpu_device`` is ``usb``, ``pci``, ``usb:0``...
    """
    if delegate not in DELEGATES:
        raise DelegateError(f"unknown delegate {delegate!r}; choose one of: {', '.join(DELEGATES)}")
    if threads < 1:
        raise DelegateError(f"threads must be at least 1, got {threads}")
    if delegate == "edgetpu" and edgetpu_model_path is None:
        raise DelegateError(f"delegate edgetpu unavailable: {_NO_EDGETPU_MODEL}")
    failures = []
    for name in _order(delegate):
        if name == "edgetpu" and edgetpu_model_path is None:
            failures.append(f"edgetpu: {_NO_EDGETPU_MODEL}")
            continue
        path = Path(edgetpu_model_path) if name == "edgetpu" else Path(model_path)
        try:
            module = interpreter_module(name)
            if name in ACCELERATORS and (reason := probe_delegate(module, name, path, threads, edgetpu_device)):
                raise DelegateError(f"delegate probe {reason}")
            interpreter = open_on(module, name, path, threads, edgetpu_device)
        except (DelegateError, RuntimeError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        if failures and delegate == "auto":
            log.warning("delegate %s in use; skipped %s", name, " | ".join(failures))
        elif failures:
            log.error("delegate %s requested but unusable, running on %s: %s", delegate, name, " | ".join(failures))
        return RuntimeHandle(interpreter, name, path)
    raise DelegateError(f"delegate {delegate} unavailable: " + " | ".join(failures))
