"""The TFLite back-end: ai-edge-litert or tflite-runtime (the one the delegate needs, see ``interpreter``), on
CPU (XNNPACK), the GPU delegate or a Coral Edge TPU (chosen in ``delegates``).

The Edge TPU runs only the ``edgetpu_compiler`` output the manifest names beside the model; its sha256 is
checked like the model's before a delegate is tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_agent.embed.manifest import Manifest, verified_model_path
from edge_agent.embed.runtime.base import Backend, RuntimeOptions, TensorInfo, bind_outputs, level_tensors, single_input
from edge_agent.embed.runtime.delegates import RuntimeHandle, open_interpreter


def _info(details: dict) -> TensorInfo:
    return TensorInfo(details["name"], tuple(int(s) for s in details["shape"]), np.dtype(details["dtype"]).name)


class TFLiteBackend(Backend):
    """An allocated interpreter, its input and its outputs bound to levels by tensor name."""

    def __init__(self, handle: RuntimeHandle, levels: Mapping[str, str]) -> None:
        self.interpreter = handle.interpreter
        self.delegate = handle.delegate
        self.model_path = handle.model_path
        inp = single_input(self.interpreter.get_input_details())
        outputs = bind_outputs({d["name"]: d for d in self.interpreter.get_output_details()}, levels)
        self.input = _info(inp)
        self.outputs = {level: _info(d) for level, d in outputs.items()}
        self._input_index = inp["index"]
        self._output_index = {level: d["index"] for level, d in outputs.items()}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        it = self.interpreter
        it.set_tensor(self._input_index, batch)
        it.invoke()
        return {level: it.get_tensor(index) for level, index in self._output_index.items()}  # copies: safe to keep


def open_tflite(model_path: Path, manifest: Manifest, options: RuntimeOptions) -> TFLiteBackend:
    """The model (already verified) on the requested delegate; ``auto`` falls back and logs why."""
    edgetpu_path = None
    if options.delegate in ("edgetpu", "auto") and manifest.edgetpu_file:
        edgetpu_path = verified_model_path(model_path.parent, manifest, edgetpu=True)
    handle = open_interpreter(model_path, options.delegate, options.threads, edgetpu_path, options.edgetpu_device)
    return TFLiteBackend(handle, level_tensors(manifest))
