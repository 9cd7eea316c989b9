"""Import whichever TFLite interpreter the device has.

Why both: ``ai-edge-litert`` is maintained and works with numpy 2, but Raspberry Pi OS users often have
``tflite-runtime`` 2.14, which only imports with numpy < 2 (it fails with ``_ARRAY_API not found``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class RuntimeUnavailable(RuntimeError):
    """No usable TFLite interpreter is installed."""


def interpreter_module() -> ModuleType:
    """The first interpreter module that imports; the error says what each attempt said."""
    errors = []
    for name in _CANDIDATES:
        try:
            return importlib.import_module(name)
        except Exception as exc:  # tflite-runtime under numpy 2 raises AttributeError/ImportError at import
            errors.append(f"{name}: {exc.__class__.__name__}: {exc}")
    raise RuntimeUnavailable(
        "no TFLite interpreter could be imported (pip install ai-edge-litert, or tflite-runtime with numpy<2): "
        + "; ".join(errors)
    )
