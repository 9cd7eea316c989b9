"""Import the TFLite interpreter a delegate needs.

Why two packages: ``ai-edge-litert`` is maintained and works with numpy 2, so CPU and GPU prefer it. The Coral's
``libedgetpu.so.1`` is different: it is compiled against one TensorFlow Lite version and reaches into the
interpreter's C structures (``TfLiteContext``, ``TfLiteDelegate``) whose layout changes between versions, so it
must run in the interpreter it was built for, or it crashes the process (SIGSEGV at ``load_delegate`` or the first
``invoke``: google-coral/edgetpu#812, #821). The ``coral`` extra installs ``tflite-runtime`` 2.14 for that
(with numpy < 2, which it needs), and the Edge TPU prefers it; docs/coral.md pairs it with a libedgetpu.
This module is the one owner of that rule.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

log = logging.getLogger(__name__)

_LITERT = "ai_edge_litert.interpreter"
_TFLITE_RUNTIME = "tflite_runtime.interpreter"
_PREFERENCE = {"edgetpu": (_TFLITE_RUNTIME, _LITERT)}
_DEFAULT = (_LITERT, _TFLITE_RUNTIME)


class RuntimeUnavailable(RuntimeError):
    """No usable TFLite interpreter is installed."""


def interpreter_module(delegate: str = "cpu") -> ModuleType:
    """The interpreter module to run ``delegate`` in; the error says what each attempt said.

    The Edge TPU falls back to ai-edge-litert only with a warning: the delegate probe then shows whether this
    libedgetpu happens to work in it.
    """
    candidates = _PREFERENCE.get(delegate, _DEFAULT)
    errors = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # tflite-runtime under numpy 2 raises AttributeError/ImportError at import
            errors.append(f"{name}: {exc.__class__.__name__}: {exc}")
            continue
        if errors and delegate == "edgetpu":
            log.warning("tflite_runtime, the interpreter libedgetpu is built for, cannot be imported (%s); trying "
                        "the Edge TPU in %s instead (install the 'coral' extra, see docs/coral.md)",
                        errors[0], runtime_version(module))
        return module
    raise RuntimeUnavailable(
        "no TFLite interpreter could be imported (pip install ai-edge-litert, or tflite-runtime with numpy<2): "
        + "; ".join(errors)
    )


def runtime_version(module: ModuleType) -> str:
    """The package and version an interpreter module comes from (``tflite_runtime 2.14.0``), for log lines."""
    package = module.__name__.partition(".")[0]
    return f"{package} {getattr(sys.modules.get(package), '__version__', 'version unknown')}"
