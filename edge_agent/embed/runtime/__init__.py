"""Runtimes behind one seam: ``open_backend(model_dir, manifest, options)`` gives a ``Backend`` whose ``run(batch)``
returns the model's outputs by level.

Why the seam is "run the model": CPU (XNNPACK), GPU delegate and Coral Edge TPU differ only in how the TFLite
interpreter is created, and another runtime differs in how a model is run at all; the extractor needs neither,
only the tensors the model declares, one call, and the name of what it runs on (``base``). One module per
runtime (``tflite``), chosen by ``factory``. The TFLite delegate is chosen in ``delegates``, which first tries an
accelerator in a child process (``probe``) and then loads it (``load``) into the interpreter package that
``interpreter`` names for it (libedgetpu needs the TensorFlow Lite it was built for).
"""

from edge_agent.embed.runtime.base import Backend, RuntimeOptions, TensorInfo
from edge_agent.embed.runtime.delegates import DELEGATES, DelegateError, RuntimeHandle, open_interpreter
from edge_agent.embed.runtime.factory import RUNTIMES, open_backend
from edge_agent.embed.runtime.interpreter import interpreter_module

__all__ = ["Backend", "DELEGATES", "DelegateError", "RUNTIMES", "RuntimeHandle", "RuntimeOptions", "TensorInfo",
           "interpreter_module", "open_backend", "open_interpreter"]
