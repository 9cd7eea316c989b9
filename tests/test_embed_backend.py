"""The runtime seam: FeatureExtractor runs on any Backend, not only TFLite.

A second runtime is written here in a few lines of numpy (a model file of ``.npz`` weights: per-channel mean of
the image projected by a matrix, and an int8 block-mean map), registered the way a real one would be, and the
extractor embeds real images with it: the manifest, its sha256 check, the tensor checks, the dequantisation and
the timings are the extractor's own, whatever the runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.capture.images import read_image
from edge_agent.capture.preprocess import resize_rgb
from edge_agent.embed.features import FeatureExtractor
from edge_agent.embed.manifest import (
    MANIFEST_FILE, InputSpec, Manifest, ManifestError, OutputSpec, Quantization, sha256_file,
)
from edge_agent.embed.runtime import RUNTIMES, Backend, RuntimeOptions, TensorInfo
from edge_agent.embed.runtime.base import bind_outputs, level_tensors

SIZE, BLOCK = 32, 8
MAP_SCALE, MAP_ZERO = 2.0, -128  # int8 map: block mean / 2 - 128, back to [0, 255] when dequantised


class NumpyBackend(Backend):
    """A 'runtime' that is a numpy function of the input batch; tensors named like a converter would."""

    TENSORS = {"mean": TensorInfo("mean", (1, 4), "float32"),
               "blocks": TensorInfo("blocks", (1, SIZE // BLOCK, SIZE // BLOCK, 3), "int8")}

    def __init__(self, model_path: Path, manifest: Manifest, options: RuntimeOptions) -> None:
        self.delegate = f"numpy-{options.threads}t"
        self.weights = np.load(model_path)["projection"]
        self.input = TensorInfo("image", (1, SIZE, SIZE, 3), "uint8")
        self.outputs = bind_outputs(self.TENSORS, level_tensors(manifest))
        self.calls = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        x = batch.astype(np.float32)
        blocks = x.reshape(1, SIZE // BLOCK, BLOCK, SIZE // BLOCK, BLOCK, 3).mean(axis=(2, 4))
        by_tensor = {"mean": x.mean(axis=(1, 2)) @ self.weights,
                     "blocks": np.round(blocks / MAP_SCALE + MAP_ZERO).astype(np.int8)}
        return {level: by_tensor[t.name] for level, t in self.outputs.items()}


def _manifest(model_file: str, sha256: str) -> Manifest:
    return Manifest(
        name="numpy-test", backbone="none", precision="int8", model_file=model_file, model_sha256=sha256,
        input=InputSpec("image", SIZE, SIZE, "RGB", "uint8", Quantization(1.0, 0)),
        outputs=(OutputSpec("pooled/stage1", "mean", (1, 4), "float32"),
                 OutputSpec("spatial/stage1", "blocks", (1, SIZE // BLOCK, SIZE // BLOCK, 3), "int8",
                            Quantization(MAP_SCALE, MAP_ZERO))),
        converter_version="test", created_at="2024-01-01T00:00:00+00:00",
    )


@pytest.fixture
def numpy_model(tmp_path, monkeypatch) -> Path:
    """A model folder for the numpy runtime, which is registered for ``.npz`` files for this test only."""
    monkeypatch.setitem(RUNTIMES, ".npz", NumpyBackend)
    folder = tmp_path / "numpy-model"
    folder.mkdir()
    np.savez(folder / "model.npz", projection=np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    (folder / MANIFEST_FILE).write_text(_manifest("model.npz", sha256_file(folder / "model.npz")).to_json())
    return folder


def test_extractor_embeds_real_images_on_another_runtime(numpy_model, real_set):
    extractor = FeatureExtractor(numpy_model, "cpu", threads=3)
    assert isinstance(extractor.backend, NumpyBackend) and extractor.delegate == "numpy-3t"
    images = [read_image(p) for p in real_set.test_good[:3] + real_set.defects[:2]]
    feats = extractor.embed(images)
    assert extractor.backend.calls == 5
    assert {k: (v.shape, v.dtype) for k, v in feats.items()} == {
        "pooled/stage1": ((5, 4), np.float32), "spatial/stage1": ((5, 4, 4, 3), np.float32)}
    assert set(extractor.last_timings) == {"preprocess_ms", "invoke_ms", "outputs_ms"}
    weights = extractor.backend.weights
    for image, pooled, spatial in zip(images, feats["pooled/stage1"], feats["spatial/stage1"]):
        rgb = resize_rgb(image, (SIZE, SIZE)).astype(np.float32)  # the extractor's own preprocessing fed the model
        np.testing.assert_allclose(pooled, rgb.mean(axis=(0, 1)) @ weights, rtol=1e-5, atol=1e-4)
        block_means = rgb.reshape(SIZE // BLOCK, BLOCK, SIZE // BLOCK, BLOCK, 3).mean(axis=(1, 3))
        # int8 outputs come back dequantised with the manifest's scale and zero point: within half a step.
        assert np.abs(spatial - block_means).max() <= MAP_SCALE / 2 + 1e-4


def test_the_extractor_checks_any_backend_against_the_manifest(numpy_model, monkeypatch):
    monkeypatch.setattr(NumpyBackend, "TENSORS", {**NumpyBackend.TENSORS, "mean": TensorInfo("mean", (1, 5), "float32")})
    with pytest.raises(ManifestError, match=r"output mean \(pooled/stage1\) is \(1, 5\) float32, manifest says \(1, 4\)"):
        FeatureExtractor(numpy_model)


def test_a_backend_that_binds_no_output_for_a_level_is_refused(numpy_model, monkeypatch):
    monkeypatch.setattr(NumpyBackend, "TENSORS", {"mean": NumpyBackend.TENSORS["mean"]})
    with pytest.raises(ManifestError, match="no output tensor 'blocks' for level spatial/stage1"):
        FeatureExtractor(numpy_model)


def test_the_input_is_checked_too(numpy_model, monkeypatch):
    manifest = json.loads((numpy_model / MANIFEST_FILE).read_text())
    manifest["input"]["height"] = 64
    (numpy_model / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"model input is \(1, 32, 32, 3\) uint8, manifest says \(1, 64, 32, 3\)"):
        FeatureExtractor(numpy_model)


def test_every_runtime_gets_the_sha256_check(numpy_model):
    np.savez(numpy_model / "model.npz", projection=np.eye(3, 4, dtype=np.float32))
    with pytest.raises(ManifestError, match="sha256"):
        FeatureExtractor(numpy_model)


def test_integer_output_without_quantization_is_refused(numpy_model):
    manifest = json.loads((numpy_model / MANIFEST_FILE).read_text())
    manifest["outputs"][1]["quantization"] = None
    (numpy_model / MANIFEST_FILE).write_text(json.dumps(manifest))
    extractor = FeatureExtractor(numpy_model)
    with pytest.raises(ManifestError, match="integer output spatial/stage1 has no quantization"):
        extractor.embed_one(np.zeros((SIZE, SIZE, 3), np.uint8))

