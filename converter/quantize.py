"""Keras feature model -> TFLite flatbuffer in fp32, fp16 or full-integer int8.

Why through a SavedModel: with Keras 3, ``TFLiteConverter.from_keras_model`` fails, and a concrete function
that keeps resource variables converts to a tiny model whose weights were never embedded (and so cannot
be quantised). Exporting a SavedModel freezes them; the size check below catches the failure mode anyway.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}


class ConversionError(RuntimeError):
    """The TFLite converter failed or produced a model that cannot be right."""


def export_saved_model(feature_model, input_size: int, directory: Path) -> Path:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(feature_model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: feature_model([image], training=False),
        input_signature=[tf.TensorSpec((1, input_size, input_size, 3), tf.float32, name="image")],
    )
    path = directory / "saved_model"
    archive.write_out(str(path), verbose=False)
    return path


def convert(
    feature_model,
    input_size: int,
    precision: str,
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
) -> bytes:
    """A TFLite model; int8 needs ``representative`` (float32 batches of RGB in [0, 255])."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and representative is None:
        raise ConversionError("int8 needs calibration images (--calibration DIR)")
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        log.info("exporting SavedModel")
        saved = export_saved_model(feature_model, input_size, Path(tmp))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            # Full integer: every op int8, uint8 pixels in (scale 1, zero point 0 since the model sees
            # [0, 255]), int8 features out, dequantised on the device with the manifest's parameters.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.int8
        log.info("converting to TFLite %s", precision)
        try:
            model = converter.convert()
        except Exception as exc:  # the converter raises ConverterError or plain Exception
            raise ConversionError(f"TFLite conversion to {precision} failed: {exc}") from exc
    check_size(model, feature_model.count_params(), precision)
    return model


def check_size(model: bytes, n_params: int, precision: str) -> None:
    """Refuse a model much smaller than its weights: variables were not frozen into it."""
    expected = n_params * _BYTES_PER_PARAM[precision]
    if len(model) < 0.6 * expected:
        raise ConversionError(
            f"{precision} model is {len(model) / 1e6:.2f} MB but its {n_params} parameters need about "
            f"{expected / 1e6:.1f} MB: the weights were left as variables"
        )
