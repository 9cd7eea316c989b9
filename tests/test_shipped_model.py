"""The model in models/ is what its manifest says, runs on the device interpreter, and keeps float fidelity."""

import json
import shutil

import numpy as np
import pytest

from edge_agent.embed.features import FeatureExtractor
from edge_agent.capture.images import read_image
from edge_agent.embed.manifest import ManifestError, load_manifest, sha256_file
from edge_agent.embed.runtime import interpreter_module


def test_manifest_matches_the_model_file(shipped_model):
    m = load_manifest(shipped_model)
    assert sha256_file(shipped_model / m.model_file) == m.model_sha256
    it = interpreter_module().Interpreter(model_path=str(shipped_model / m.model_file))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    assert tuple(inp["shape"]) == (1, m.input.height, m.input.width, 3) and np.dtype(inp["dtype"]).name == m.input.dtype
    details = {d["name"]: d for d in it.get_output_details()}
    for out in m.outputs:
        assert tuple(details[out.tensor]["shape"]) == out.shape
        assert np.dtype(details[out.tensor]["dtype"]).name == out.dtype
        assert details[out.tensor]["quantization"][0] == pytest.approx(out.quantization.scale)
    assert m.precision == "int8" and m.weights["source"] == "imagenet"
    assert all(v["mean_cosine"] >= 0.95 for v in m.fidelity["levels"].values())


def test_embeds_real_images(shipped_model, real_set):
    extractor = FeatureExtractor(shipped_model)
    one = extractor.embed_one(read_image(real_set.test_good[0]))
    assert set(one) == set(extractor.manifest.levels)
    for out in extractor.manifest.outputs:
        assert one[out.level].shape == out.shape[1:] and one[out.level].dtype == np.float32
        assert np.isfinite(one[out.level]).all()
    assert set(extractor.last_timings) == {"preprocess_ms", "invoke_ms", "outputs_ms"}

    def embed(paths):
        return extractor.embed([read_image(p) for p in paths[:10]])["pooled/stage7"]

    centre = embed(real_set.train_good).mean(axis=0)
    good = np.linalg.norm(embed(real_set.test_good) - centre, axis=1).mean()
    defects = np.linalg.norm(embed(real_set.defects) - centre, axis=1).mean()
    # Defective parts lie further from the good ones than other good parts do: measured 3.1x on bottle
    # (broken_large) and 1.24x on the elpv cells, whose good cells already differ a lot from one another.
    assert defects > 1.15 * good, (defects, good)


def _copy(shipped_model, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(shipped_model, dst)
    return dst


def test_swapped_model_file_is_refused(shipped_model, tmp_path):
    dst = _copy(shipped_model, tmp_path)
    data = bytearray((dst / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        FeatureExtractor(dst)


def test_manifest_that_lies_about_shapes_is_refused(shipped_model, tmp_path):
    dst = _copy(shipped_model, tmp_path)
    d = json.loads((dst / "manifest.json").read_text())
    d["outputs"][0]["shape"] = [1, 999]
    (dst / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="manifest says"):
        FeatureExtractor(dst)


def test_manifest_missing_a_key_names_it(shipped_model, tmp_path):
    dst = _copy(shipped_model, tmp_path)
    d = json.loads((dst / "manifest.json").read_text())
    del d["model_sha256"]
    (dst / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="model_sha256"):
        load_manifest(dst)


def test_fidelity_on_real_images_is_at_least_095(shipped_model, real_set):
    pytest.importorskip("tensorflow")  # the converter extra (always there in CI): the float Keras reference
    from converter.fidelity_check import check

    report = check(shipped_model, real_set.test_good[:15] + real_set.defects[:15])
    assert report["n_images"] == 30 and sum("good/" in name for name in report["images"]) == 15
    for level, v in report["levels"].items():
        assert v["mean_cosine"] >= 0.95, (level, v)
