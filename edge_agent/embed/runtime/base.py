"""The runtime seam: a ``Backend`` runs the model on one input batch and returns its outputs by level.

Why the seam is "run the model" and not "open an interpreter": the feature extractor needs three things from a
runtime (what the model declares it takes and gives, one call that runs it, and the name of what it runs on),
and nothing of how a particular runtime sets tensors or invokes. So a new runtime (ONNX Runtime, say) is one
new module with one ``Backend`` class and one line in ``runtime.factory.RUNTIMES``; the checks against the
manifest and the dequantisation stay in ``edge_agent.embed.features``, the same for every back-end.

A back-end returns outputs as the model produces them (int8 for a full-integer model): the manifest's scale
and zero point turn them into float features in one place, whatever ran the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from edge_agent.embed.manifest import Manifest, ManifestError

T = TypeVar("T")


@dataclass(frozen=True)
class TensorInfo:
    """A model tensor as the runtime describes it: name, shape with the batch axis, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.shape} {self.dtype}"


@dataclass(frozen=True)
class RuntimeOptions:
    """What the caller asks of a runtime: the delegate (``cpu``, ``gpu``, ``edgetpu``, ``auto``), the number
    of threads, and which Edge TPU when there are several (``usb``, ``pci``, ``usb:0``...)."""

    delegate: str = "cpu"
    threads: int = 2
    edgetpu_device: str | None = None


class Backend(ABC):
    """One loaded model on one runtime.

    ``input`` and ``outputs`` are what the model itself declares (``outputs`` keyed by the manifest's level
    names); the extractor checks them against the manifest before the first ``run``.
    """

    delegate: str  # what it actually runs on, for logs and the state message ("cpu", "gpu", "edgetpu", ...)
    input: TensorInfo
    outputs: dict[str, TensorInfo]

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for ``batch`` (shape and dtype of ``input``), keyed by level, in their own dtype."""


def level_tensors(manifest: Manifest) -> dict[str, str]:
    """Level -> the output tensor name the manifest says carries it."""
    return {o.level: o.tensor for o in manifest.outputs}


def bind_outputs(declared: Mapping[str, T], levels: Mapping[str, str]) -> dict[str, T]:
    """Map each level to the model's output of that tensor name (never by position: converters reorder them).

    ``declared`` is what the runtime knows of each output tensor (its index, say), keyed by tensor name.
    """
    bound = {}
    for level, tensor in levels.items():
        if tensor not in declared:
            raise ManifestError(f"model has no output tensor {tensor!r} for level {level}")
        bound[level] = declared[tensor]
    return bound


def single_input(inputs: list[T]) -> T:
    """The model's one input; a model with another number of inputs was not made by edge-convert."""
    if len(inputs) != 1:
        raise ManifestError(f"model has {len(inputs)} inputs, expected 1")
    return inputs[0]

