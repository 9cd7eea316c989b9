"""FeatureExtractor: a model folder (model file + ``manifest.json``) turned into per-level features.

Why the checks up front: a model file swapped without its manifest, or a manifest from another build,
would give features of the wrong shape or meaning, and the detector would score garbage without any
error. So the sha256 and every tensor's shape and dtype are checked against the manifest before use, and
outputs are mapped to levels by tensor name, never by position (converted models reorder them).

Which runtime runs the model is the back-end's business (``edge_agent.embed.runtime``): this module checks what
the back-end says the model declares, feeds it, and turns its outputs into float features with the manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edge_agent.capture.preprocess import preprocess
from edge_agent.embed.manifest import Features, Manifest, ManifestError, OutputSpec, load_manifest
from edge_agent.embed.runtime import Backend, RuntimeOptions, open_backend

log = logging.getLogger(__name__)



def check_backend(manifest: Manifest, backend: Backend) -> None:
    """The model the back-end loaded is the one the manifest describes: input, and every level's output."""
    spec = manifest.input
    expected_shape = (1, spec.height, spec.width, 3)
    if backend.input.shape != expected_shape or backend.input.dtype != spec.dtype:
        raise ManifestError(f"model input is {backend.input.describe()}, manifest says {expected_shape} {spec.dtype}")
    for out in manifest.outputs:
        got = backend.outputs.get(out.level)
        if got is None:
            raise ManifestError(f"the {backend.delegate} back-end gives no output for level {out.level} "
                                f"(tensor {out.tensor!r})")
        if got.shape != out.shape or got.dtype != out.dtype:
            raise ManifestError(f"output {out.tensor} ({out.level}) is {got.describe()}, "
                                f"manifest says {out.shape} {out.dtype}")


def dequantize(out: OutputSpec, value: np.ndarray) -> np.ndarray:
    """Float features whatever the output type: integer outputs carry scale and zero point in the manifest."""
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32)
    q = out.quantization
    if q is None:
        raise ManifestError(f"integer output {out.level} has no quantization in the manifest")
    return (value.astype(np.float32) - q.zero_point) * q.scale


class FeatureExtractor:
    """Embeds RGB (or grayscale) images into ``{level: features}`` with a verified model on its runtime."""

    def __init__(self, model_dir: str | Path, delegate: str = "cpu", threads: int = 2,
                 edgetpu_device: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        self.backend: Backend = open_backend(self.model_dir, self.manifest,
                                             RuntimeOptions(delegate, threads, edgetpu_device))
        check_backend(self.manifest, self.backend)
        self.last_timings: dict[str, float] = {}

    @property
    def delegate(self) -> str:
        return self.backend.delegate

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """The batch of one the model takes for ``image``: resized, RGB, cast or quantised to the input's type."""
        spec = self.manifest.input
        q = spec.quantization
        return preprocess(image, (spec.height, spec.width), spec.dtype, q.scale if q else 0.0, q.zero_point if q else 0)

    def embed_one(self, image: np.ndarray) -> Features:
        """Features of one image, each level without the batch axis; ``last_timings`` says where the time went
        (``invoke_ms`` is the back-end's run: input in, model, outputs out; ``outputs_ms`` the dequantisation)."""
        t0 = time.perf_counter()
        x = self.model_input(image)
        t1 = time.perf_counter()
        raw = self.backend.run(x)
        t2 = time.perf_counter()
        out = {o.level: dequantize(o, raw[o.level][0]) for o in self.manifest.outputs}
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
