"""One conversion run: validate everything, build, convert, measure fidelity, then publish atomically.

Why validate first: conversion takes minutes; a typo in a path should fail in a second with the output
folder untouched. Why build in a temporary folder beside the output: a failed or interrupted run must not
leave half a model where the device would pick it up, and ``rename`` is atomic on one file system.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from converter.backbones import BackboneSpec, get_backbone
from converter.calibration import MIN_CALIBRATION_IMAGES, CalibrationSet, load_calibration
from converter.edgetpu import compile_model, require_compiler
from converter.feature_model import build_backbone, build_feature_model, output_levels, resolve_weights
from converter.fidelity import fidelity_report, keras_features
from converter.quantize import PRECISIONS, convert
from edge_agent import __version__
from edge_agent.system.atomic import write_text_atomic
from edge_agent.embed.features import FeatureExtractor
from edge_agent.embed.manifest import (
    MANIFEST_FILE, InputSpec, Manifest, OutputSpec, Quantization, sha256_file,
)
from edge_agent.embed.runtime import interpreter_module

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"


class ConvertError(ValueError):
    """A request that cannot be converted as given."""


@dataclass
class ConvertRequest:
    backbone: str
    output: Path
    weights: str = "imagenet"
    weights_sha256: str | None = None
    precision: str = "int8"
    calibration: Path | None = None
    input_size: int | None = None
    pooled_taps: tuple[int, ...] | None = None
    spatial_taps: tuple[int, ...] = ()
    edgetpu: bool = False
    overwrite: bool = False
    name: str | None = None
    holdout_every: int = 5
    min_images: int = MIN_CALIBRATION_IMAGES


@dataclass
class _Plan:
    spec: BackboneSpec
    size: int
    pooled: tuple[int, ...]
    spatial: tuple[int, ...]
    weights: str | None
    calibration: CalibrationSet | None
    name: str

    @property
    def level_of(self) -> dict[str, str]:
        return output_levels(self.pooled, self.spatial)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConvertError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConvertError(f"output folder {output} is not empty: pass --overwrite to replace it")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(dir=parent, prefix=".edge-convert-probe-")
        os.rmdir(probe)
    except OSError as exc:
        raise ConvertError(f"output folder {output} is not writable: {exc.strerror or exc}") from None


def plan(req: ConvertRequest) -> _Plan:
    """Every check that needs no TensorFlow, in the order a user would fix them."""
    spec = get_backbone(req.backbone)
    if req.precision not in PRECISIONS:
        raise ConvertError(f"unknown precision {req.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    size = req.input_size or spec.input_size
    if not 32 <= size <= 1024:
        raise ConvertError(f"input size {size} must be between 32 and 1024")
    pooled = req.pooled_taps if req.pooled_taps is not None else spec.pooled_taps
    for stage in (*pooled, *req.spatial_taps):
        if not 1 <= stage <= 7:
            raise ConvertError(f"tap {stage} is not a stage of EfficientNet (1-7)")
    if not pooled and not req.spatial_taps:
        raise ConvertError("no taps: give at least one pooled or spatial tap")
    weights = resolve_weights(spec, req.weights, req.weights_sha256)
    if req.edgetpu:
        if req.precision != "int8":
            raise ConvertError("--edgetpu needs --precision int8")
        require_compiler()
    _check_output(req.output, req.overwrite)
    if req.precision == "int8" and req.calibration is None:
        raise ConvertError("int8 needs a folder of your own images: --calibration DIR")
    calibration = None
    if req.calibration is not None:
        calibration = load_calibration(req.calibration, size, req.holdout_every, req.min_images)
    name = req.name or f"{spec.name}-{size}-{req.precision}"
    return _Plan(spec, size, tuple(pooled), tuple(req.spatial_taps), weights, calibration, name)


def _representative(images: list[np.ndarray]):
    def gen():
        for i, image in enumerate(images, 1):
            if i % max(1, len(images) // 10) == 0 or i == len(images):
                log.info("calibrating: %d/%d images", i, len(images))
            yield [image.astype(np.float32)[None]]
    return gen


def _quant(details: dict) -> Quantization | None:
    scale, zero = details["quantization"]
    return Quantization(float(scale), int(zero)) if scale else None


def _describe(model_path: Path, p: _Plan, req: ConvertRequest) -> Manifest:
    """The manifest of a converted file, read off the interpreter itself rather than assumed."""
    it = interpreter_module().Interpreter(model_path=str(model_path))
    it.allocate_tensors()
    signature = it._get_full_signature_list()["serving_default"]
    by_index = {d["index"]: d for d in it.get_output_details()}
    outputs = []
    for name, index in sorted(signature["outputs"].items()):
        d = by_index[index]
        outputs.append(OutputSpec(p.level_of[name], d["name"], tuple(int(s) for s in d["shape"]),
                                  np.dtype(d["dtype"]).name, _quant(d)))
    inp = it.get_input_details()[0]
    weights: dict = {"source": "random" if p.weights is None else req.weights if req.weights == "imagenet" else "file"}
    if p.weights not in (None, "imagenet"):
        weights |= {"file": Path(p.weights).name, "sha256": sha256_file(p.weights)}
    calibration = {}
    if p.calibration is not None:
        calibration = {"folder": p.calibration.folder.name, "n_calibration": len(p.calibration.calibration),
                       "n_holdout": len(p.calibration.holdout)}
    return Manifest(
        name=p.name, backbone=p.spec.name, precision=req.precision, model_file=MODEL_FILE,
        model_sha256=sha256_file(model_path),
        input=InputSpec(inp["name"], p.size, p.size, "RGB", np.dtype(inp["dtype"]).name, _quant(inp)),
        outputs=tuple(outputs), converter_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        weights=weights, calibration=calibration,
    )


def _publish(staging: Path, output: Path) -> None:
    """Swap the finished folder into place; the old one is removed only once the new one is there."""
    backup = None
    if output.exists():
        backup = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.rename(output, backup)
    os.rename(staging, output)
    if backup is not None:
        shutil.rmtree(backup)


def run(req: ConvertRequest) -> Manifest:
    p = plan(req)
    log.info("building %s (%dx%d, pooled taps %s, spatial taps %s)", p.spec.name, p.size, p.size, p.pooled, p.spatial)
    backbone = build_backbone(p.spec, p.size, p.weights)
    feature_model = build_feature_model(backbone, p.pooled, p.spatial)
    representative = _representative(p.calibration.calibration) if req.precision == "int8" else None
    model = convert(feature_model, p.size, req.precision, representative)
    staging = Path(tempfile.mkdtemp(dir=req.output.parent, prefix=f".{req.output.name}.partial-"))
    staging.chmod(0o755)
    try:
        model_path = staging / MODEL_FILE
        model_path.write_bytes(model)
        manifest = _describe(model_path, p, req)
        if p.calibration is not None and p.calibration.holdout:
            write_text_atomic(staging / MANIFEST_FILE, manifest.to_json())
            log.info("fidelity on %d held-out images", len(p.calibration.holdout))
            candidate = FeatureExtractor(staging).embed(p.calibration.holdout)
            reference = keras_features(feature_model, p.calibration.holdout, p.level_of)
            fidelity = fidelity_report(reference, candidate, p.calibration.holdout_names)
            manifest = replace(manifest, fidelity=fidelity)
        if req.edgetpu:
            compiled = compile_model(model_path, staging)
            manifest = replace(manifest, edgetpu_file=compiled.name, edgetpu_sha256=sha256_file(compiled))
        write_text_atomic(staging / MANIFEST_FILE, manifest.to_json())
        _publish(staging, req.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s (%.2f MB, sha256 %s)", req.output / MODEL_FILE, len(model) / 1e6, manifest.model_sha256[:12])
    return manifest

