"""FeatureExtractor: a model folder (``model.tflite`` + ``manifest.json``) turned into per-level features.

Why the checks up front: a model file swapped without its manifest, or a manifest from another build,
would give features of the wrong shape or meaning, and the detector would score garbage without any
error. So the sha256 and every tensor's shape and dtype are checked against the manifest before use, and
outputs are mapped to levels by tensor name, never by position (converted models reorder them).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edge_agent.embed.manifest import Manifest, ManifestError, OutputSpec, load_manifest, verified_model_path
from edge_agent.capture.preprocess import preprocess
from edge_agent.embed.runtime import RuntimeHandle, open_interpreter

log = logging.getLogger(__name__)

Features = dict[str, np.ndarray]


class FeatureExtractor:
    """Embeds RGB (or grayscale) images into ``{level: features}`` with a verified TFLite model."""

    def __init__(self, model_dir: str | Path, delegate: str = "cpu", threads: int = 2,
                 edgetpu_device: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        model_path = verified_model_path(self.model_dir, self.manifest)
        edgetpu_path = None
        if delegate in ("edgetpu", "auto") and self.manifest.edgetpu_file:
            edgetpu_path = verified_model_path(self.model_dir, self.manifest, edgetpu=True)
        self.runtime: RuntimeHandle = open_interpreter(model_path, delegate, threads, edgetpu_path, edgetpu_device)
        self._input_index, self._output_index = self._check_tensors()
        self.last_timings: dict[str, float] = {}

    @property
    def delegate(self) -> str:
        return self.runtime.delegate

    def _check_tensors(self) -> tuple[int, dict[str, int]]:
        it = self.runtime.interpreter
        spec = self.manifest.input
        inputs = it.get_input_details()
        if len(inputs) != 1:
            raise ManifestError(f"model has {len(inputs)} inputs, expected 1")
        inp = inputs[0]
        expected_shape = (1, spec.height, spec.width, 3)
        if tuple(inp["shape"]) != expected_shape or np.dtype(inp["dtype"]).name != spec.dtype:
            raise ManifestError(
                f"model input is {tuple(inp['shape'])} {np.dtype(inp['dtype']).name}, "
                f"manifest says {expected_shape} {spec.dtype}"
            )
        by_name = {d["name"]: d for d in it.get_output_details()}
        index = {}
        for out in self.manifest.outputs:
            d = by_name.get(out.tensor)
            if d is None:
                raise ManifestError(f"model has no output tensor {out.tensor!r} for level {out.level}")
            if tuple(d["shape"]) != out.shape or np.dtype(d["dtype"]).name != out.dtype:
                raise ManifestError(
                    f"output {out.tensor} ({out.level}) is {tuple(d['shape'])} {np.dtype(d['dtype']).name}, "
                    f"manifest says {out.shape} {out.dtype}"
                )
            index[out.level] = d["index"]
        return inp["index"], index

    def _dequantize(self, out: OutputSpec, value: np.ndarray) -> np.ndarray:
        """Float features whatever the output type: integer outputs carry scale and zero point."""
        if np.issubdtype(value.dtype, np.floating):
            return value.astype(np.float32)
        q = out.quantization
        if q is None:
            raise ManifestError(f"integer output {out.level} has no quantization in the manifest")
        return (value.astype(np.float32) - q.zero_point) * q.scale

    def embed_one(self, image: np.ndarray) -> Features:
        """Features of one image, each level without the batch axis; ``last_timings`` says where the time went."""
        spec = self.manifest.input
        q = spec.quantization
        t0 = time.perf_counter()
        x = preprocess(image, (spec.height, spec.width), spec.dtype, q.scale if q else 0.0, q.zero_point if q else 0)
        it = self.runtime.interpreter
        it.set_tensor(self._input_index, x)
        t1 = time.perf_counter()
        it.invoke()
        t2 = time.perf_counter()
        out = {o.level: self._dequantize(o, it.get_tensor(self._output_index[o.level])[0]) for o in self.manifest.outputs}
        self.last_timings = {"preprocess_ms": (t1 - t0) * 1e3, "invoke_ms": (t2 - t1) * 1e3,
                             "outputs_ms": (time.perf_counter() - t2) * 1e3}
        return out

    def embed(self, images: Iterable[np.ndarray], progress: str | None = None,
              tick: Callable[[], None] | None = None) -> Features:
        """Stacked features of many images; logs progress every tenth of the way when ``progress`` names the job.

        ``tick`` is called after each image: the agent feeds the systemd watchdog with it during a long fit.
        """
        images = list(images)
        rows: list[Features] = []
        step = max(1, len(images) // 10)
        for i, image in enumerate(images, 1):
            rows.append(self.embed_one(image))
            if tick is not None:
                tick()
            if progress and (i % step == 0 or i == len(images)):
                log.info("%s: embedded %d/%d images", progress, i, len(images))
        if not rows:
            raise ValueError("no images to embed")
        return {level: np.stack([r[level] for r in rows]) for level in rows[0]}
