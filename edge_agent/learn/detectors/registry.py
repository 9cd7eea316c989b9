"""Detectors by name, and back from a saved spec: the registry that `edge_agent.learn.detectors` fills.

It imports no detector implementation, so a detector made of others (the combined one) and the file format
(`edge_agent.learn.detectors.persistence`) create detectors through it without importing the package that
imports them. ``edge_agent.learn.detectors`` registers every shipped detector when it is imported, which Python
does before any of its modules, so the registry is full whenever a detector can be used.

`DEFAULT_DETECTOR` is the one place that says which detector the camera ships with (the configuration and
`edge_agent.learn.fitting.FitSettings` take it from here; docs/results.md explains the choice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.learn.detectors.base import Detector

DEFAULT_DETECTOR = "combined"

#: Registry name -> (class, parameters fixed by the name), in registration order.
_BY_NAME: dict[str, tuple[type[Detector], dict[str, Any]]] = {}
#: Class name -> class, to rebuild a saved detector without pickle.
_BY_CLASS: dict[str, type[Detector]] = {}


def register(name: str, cls: type[Detector], **fixed: Any) -> None:
    """Make ``cls`` available as ``name``, with constructor parameters ``fixed`` by that name."""
    if name in _BY_NAME and _BY_NAME[name] != (cls, fixed):
        raise ValueError(f"detector name {name!r} is already registered for {_BY_NAME[name][0].__name__}")
    _BY_NAME[name] = (cls, dict(fixed))
    _BY_CLASS[cls.__name__] = cls


def detector_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_BY_NAME)


def detector_classes() -> dict[str, type[Detector]]:
    """Class name -> class of every registered detector (a copy)."""
    return dict(_BY_CLASS)


def make_detector(name: str = DEFAULT_DETECTOR, **params: Any) -> Detector:
    """Create an unfitted detector by registry name; ``params`` go to its constructor."""
    try:
        cls, fixed = _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; valid names: {', '.join(_BY_NAME)}") from None
    clash = sorted(set(fixed) & set(params))
    if clash:
        raise ValueError(f"detector {name!r} fixes {clash}; pass another name instead of overriding them")
    return cls(**fixed, **params)


def detector_spec(detector: Detector) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A fitted detector as a JSON-able spec (class, parameters, attributes) plus its arrays.

    Shared by the file format and by detectors that hold other detectors (the combined one).
    """
    attrs, arrays = detector.get_state()
    return {"class": type(detector).__name__, "params": detector.get_params(), "attrs": attrs}, arrays


def detector_from_spec(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Detector:
    """Inverse of `detector_spec`; ValueError for an unknown class, KeyError/TypeError for an incomplete spec."""
    cls = _BY_CLASS.get(spec.get("class"))
    if cls is None:
        raise ValueError(f"unknown detector class {spec.get('class')!r}; known: {sorted(_BY_CLASS)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("params", {}).items()}
    return cls(**params).set_state(spec["attrs"], arrays)
