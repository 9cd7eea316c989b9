"""The Keras graphs: the Lite port classifies like ImageNet, and B4 has the paper's taps and int8 size."""

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from converter import efficientnet_lite  # noqa: E402
from converter.backbones import get_backbone  # noqa: E402
from converter.convert import ConvertRequest, run  # noqa: E402
from converter.feature_model import build_backbone, build_feature_model, resolve_weights  # noqa: E402
from converter.torch_legacy import load_state_dict  # noqa: E402
from edge_agent.capture.preprocess import resize_rgb  # noqa: E402


def _centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    c = min(h, w)
    return image[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_lite_port_classifies_skimage_photos(name):
    import skimage.data

    spec = get_backbone(name)
    model = efficientnet_lite.build(spec.width, spec.depth, spec.input_size, include_top=True)
    efficientnet_lite.load_weights(model, load_state_dict(resolve_weights(spec, "imagenet", None)), spec.width, spec.depth)
    batch = np.stack([
        resize_rgb(_centre_square(getattr(skimage.data, photo)()), (spec.input_size,) * 2) for photo in ("chelsea", "coffee")
    ]).astype(np.float32)
    logits = model.predict(batch, verbose=0)
    assert logits.argmax(axis=1).tolist() == [285, 967]  # Egyptian cat, espresso


@pytest.mark.parametrize("name, dims", [
    ("efficientnet-lite0", {4: 80, 6: 192, 7: 320}),
    ("efficientnet-lite2", {4: 88, 6: 208, 7: 352}),
])
def test_lite_taps_have_documented_dims(name, dims):
    spec = get_backbone(name)
    model = build_feature_model(build_backbone(spec, spec.input_size, None), (4, 6, 7), ())
    assert {k: v.shape[-1] for k, v in model.output.items()} == {f"pooled_stage{s}": d for s, d in dims.items()}


def test_lite_weights_for_another_variant_are_refused():
    spec0, spec2 = get_backbone("efficientnet-lite0"), get_backbone("efficientnet-lite2")
    model = efficientnet_lite.build(spec2.width, spec2.depth, spec2.input_size)
    with pytest.raises(ValueError, match="another EfficientNet-Lite variant|lacks"):
        efficientnet_lite.load_weights(model, load_state_dict(resolve_weights(spec0, "imagenet", None)),
                                       spec2.width, spec2.depth)


@pytest.mark.slow
def test_b4_graph_taps_and_int8_size(small_calibration_dir, tmp_path):
    spec = get_backbone("efficientnet-b4")
    feature_model = build_feature_model(build_backbone(spec, 380, None), spec.pooled_taps, ())
    assert {k: v.shape[-1] for k, v in feature_model.output.items()} == {
        "pooled_stage4": 112, "pooled_stage6": 272, "pooled_stage7": 448}
    manifest = run(ConvertRequest(backbone="efficientnet-b4", weights="random", precision="int8",
                                  calibration=small_calibration_dir, output=tmp_path / "b4"))
    size = (tmp_path / "b4" / "model.tflite").stat().st_size
    assert 15e6 < size < 25e6, f"B4 int8 is {size / 1e6:.1f} MB; about 19 MB expected (0.5 MB = weights left as variables)"
    assert manifest.levels == {"pooled/stage4": 112, "pooled/stage6": 272, "pooled/stage7": 448}
    assert manifest.input.dtype == "uint8" and (manifest.input.height, manifest.input.width) == (380, 380)
    assert all(o.dtype == "int8" for o in manifest.outputs)
