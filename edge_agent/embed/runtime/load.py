"""Create one allocated interpreter on one delegate, in the calling process.

Why a module of its own: it runs twice with the same arguments, first in a child process by the delegate probe
(``probe``), then, once that child survived, in the agent's process (``delegates``); so what the probe checked is
exactly what the agent runs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

_GPU_LIBRARIES = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so")
EDGETPU_LIBRARY = "libedgetpu.so.1"


class DelegateError(RuntimeError):
    """The requested delegate could not be loaded or cannot run this model."""


def _cpu(module: ModuleType, model_path: Path, threads: int, edgetpu_device: str | None) -> Any:
    return module.Interpreter(model_path=str(model_path), num_threads=threads)


def _with_delegate(module: ModuleType, model_path: Path, threads: int, library: str, options: dict) -> Any:
    try:
        # dlopen first: load_delegate on a missing library leaves a half-built Delegate whose __del__ prints a
        # traceback to stderr (ai-edge-litert), which on a device without a GPU reads like a crash.
        ctypes.CDLL(library)
        delegate = module.load_delegate(library, options)
    except (ValueError, OSError, RuntimeError, AttributeError) as exc:  # AttributeError: not a delegate library
        raise DelegateError(f"cannot load {library}: {exc}") from None
    return module.Interpreter(model_path=str(model_path), experimental_delegates=[delegate], num_threads=threads)


def _gpu(module: ModuleType, model_path: Path, threads: int, edgetpu_device: str | None) -> Any:
    errors = []
    for library in _GPU_LIBRARIES:
        try:
            return _with_delegate(module, model_path, threads, library, {})
        except DelegateError as exc:
            errors.append(str(exc))
    raise DelegateError("; ".join(errors))


def _edgetpu(module: ModuleType, model_path: Path, threads: int, edgetpu_device: str | None) -> Any:
    options = {"device": edgetpu_device} if edgetpu_device else {}
    return _with_delegate(module, model_path, threads, EDGETPU_LIBRARY, options)


_OPENERS: dict[str, Callable[[ModuleType, Path, int, str | None], Any]] = {
    "cpu": _cpu, "gpu": _gpu, "edgetpu": _edgetpu}
ACCELERATORS = ("edgetpu", "gpu")  # what loads native code of its own into the interpreter: probed first


def open_on(module: ModuleType, delegate: str, model_path: Path, threads: int, edgetpu_device: str | None) -> Any:
    """An allocated interpreter of ``module`` running ``model_path`` on ``delegate`` (``cpu``, ``gpu``, ``edgetpu``).

    ``edgetpu_device`` picks the Edge TPU when there are several (``usb``, ``pci``, ``usb:0``...).
    """
    interpreter = _OPENERS[delegate](module, model_path, threads, edgetpu_device)
    interpreter.allocate_tensors()
    return interpreter
