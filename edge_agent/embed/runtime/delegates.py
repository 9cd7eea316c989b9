"""Create an interpreter on CPU (XNNPACK), the GPU delegate or a Coral Edge TPU.

``auto`` tries Edge TPU, then GPU, then CPU, and logs why each one it skipped failed, so a device that
silently runs on CPU is visible in the journal and in the state message.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edge_agent.embed.runtime.interpreter import interpreter_module

log = logging.getLogger(__name__)

DELEGATES = ("cpu", "gpu", "edgetpu", "auto")
_GPU_LIBRARIES = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so")
_EDGETPU_LIBRARY = "libedgetpu.so.1"


class DelegateError(RuntimeError):
    """The requested delegate could not be loaded or cannot run this model."""


@dataclass
class RuntimeHandle:
    interpreter: Any
    delegate: str  # the delegate actually in use
    model_path: Path


def _cpu(module, model_path: Path, threads: int, options: dict) -> Any:
    return module.Interpreter(model_path=str(model_path), num_threads=threads)


def _with_delegate(module, model_path: Path, threads: int, library: str, options: dict) -> Any:
    try:
        # dlopen first: load_delegate on a missing library leaves a half-built Delegate whose __del__ prints a
        # traceback to stderr (ai-edge-litert), which on a device without a GPU reads like a crash.
        ctypes.CDLL(library)
        delegate = module.load_delegate(library, options)
    except (ValueError, OSError, RuntimeError) as exc:
        raise DelegateError(f"cannot load {library}: {exc}") from None
    return module.Interpreter(model_path=str(model_path), experimental_delegates=[delegate], num_threads=threads)


def _gpu(module, model_path: Path, threads: int, options: dict) -> Any:
    errors = []
    for library in _GPU_LIBRARIES:
        try:
            return _with_delegate(module, model_path, threads, library, {})
        except DelegateError as exc:
            errors.append(str(exc))
    raise DelegateError("; ".join(errors))


def _edgetpu(module, model_path: Path, threads: int, options: dict) -> Any:
    device = options.get("edgetpu_device")
    return _with_delegate(module, model_path, threads, _EDGETPU_LIBRARY, {"device": device} if device else {})


_OPENERS: dict[str, Callable[..., Any]] = {"cpu": _cpu, "gpu": _gpu, "edgetpu": _edgetpu}


def open_interpreter(
    model_path: str | Path,
    delegate: str = "cpu",
    threads: int = 2,
    edgetpu_model_path: str | Path | None = None,
    edgetpu_device: str | None = None,
) -> RuntimeHandle:
    """An allocated interpreter on the requested delegate.

    The Edge TPU runs only a model compiled by ``edgetpu_compiler``; ``edgetpu_model_path`` names it, and
    without it ``edgetpu`` fails and ``auto`` skips it. ``edgetpu_device`` is ``usb``, ``pci``, ``usb:0``...
    """
    if delegate not in DELEGATES:
        raise DelegateError(f"unknown delegate {delegate!r}; choose one of: {', '.join(DELEGATES)}")
    if threads < 1:
        raise DelegateError(f"threads must be at least 1, got {threads}")
    module = interpreter_module()
    options = {"edgetpu_device": edgetpu_device}
    order = ("edgetpu", "gpu", "cpu") if delegate == "auto" else (delegate,)
    failures = []
    for name in order:
        path = Path(edgetpu_model_path) if name == "edgetpu" and edgetpu_model_path else Path(model_path)
        if name == "edgetpu" and edgetpu_model_path is None:
            failures.append("edgetpu: the model folder has no Edge TPU-compiled model")
            continue
        try:
            interpreter = _OPENERS[name](module, path, threads, options)
            interpreter.allocate_tensors()
        except (DelegateError, RuntimeError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        if failures:
            log.warning("delegate %s in use; skipped %s", name, " | ".join(failures))
        return RuntimeHandle(interpreter, name, path)
    raise DelegateError(f"delegate {delegate} unavailable: " + " | ".join(failures))
