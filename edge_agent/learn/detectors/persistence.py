"""Save and load a fitted detector: versioned, checksummed, atomic, and without pickle.

A camera loads whatever file sits in its model directory at boot, possibly after a power cut during a retrain
or after someone copied a file from another line. So a file states its format version, carries the sha256 of
its payload, names the model (by the sha256 of the model file in its manifest) it was fitted for, and holds
only JSON and plain numeric arrays: loading it never executes code (``allow_pickle=False``).

Layout (little-endian)::

    offset 0   8 bytes   magic b"EADETECT"
    offset 8   u32       format version (1, or 2 when the parts are turned upright first: UPRIGHT_VERSION)
    offset 12  u64       payload length in bytes
    offset 20  32 bytes  sha256 of the payload
    offset 52  payload:  u32 JSON length, JSON header (UTF-8), then an .npz archive of the fitted arrays

The JSON header holds the caller's metadata (model id, model sha256, augmentation policy, threshold,
n_train, fitted_at, ...), the detector class name, its parameters and its JSON-able fitted attributes.
Writes go to a temporary file in the same directory, are fsynced and then renamed over the target
(``os.replace``), so a reader sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_agent.learn.detectors.base import Detector
from edge_agent.learn.detectors.registry import detector_classes, detector_from_spec, detector_spec
from edge_agent.learn.upright import METADATA_KEY as META_UPRIGHT, Upright
from edge_agent.system.atomic import write_bytes_atomic

MAGIC = b"EADETECT"
FORMAT_VERSION = 1
#: A file whose detector judges parts turned upright (metadata ``upright``, `edge_agent.learn.upright`). Agents
#: from before that step would read it and judge the parts as the camera sees them, silently wrong; this
#: version makes them refuse it. Files without the step keep version 1, so older agents still read those.
UPRIGHT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, UPRIGHT_VERSION)
#: Metadata keys this module reads; the caller may add any other JSON-able key.
META_MODEL_SHA256 = "model_sha256"
META_MODEL_ID = "model_id"

_PREFIX = struct.Struct("<8sIQ32s")
_JSON_LEN = struct.Struct("<I")


class DetectorFileError(ValueError):
    """A detector file that cannot be used: truncated, corrupted, of an unknown version, or for another model."""


class LoadedDetector(NamedTuple):
    detector: Detector
    metadata: dict[str, Any]


def _encode(detector: Detector, metadata: Mapping[str, Any]) -> bytes:
    spec, arrays = detector_spec(detector)
    bad = [name for name, arr in arrays.items() if np.asarray(arr).dtype.hasobject]
    if bad:
        raise TypeError(f"fitted arrays {bad} hold Python objects, which this format refuses to store")
    header = {"metadata": dict(metadata), "detector": spec}
    header_bytes = json.dumps(header, allow_nan=False, sort_keys=True).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    payload = _JSON_LEN.pack(len(header_bytes)) + header_bytes + buf.getvalue()
    version = UPRIGHT_VERSION if metadata.get(META_UPRIGHT) is not None else FORMAT_VERSION
    return _PREFIX.pack(MAGIC, version, len(payload), hashlib.sha256(payload).digest()) + payload


def save_detector(path: str | os.PathLike[str], detector: Detector, metadata: Mapping[str, Any]) -> Path:
    """Write ``detector`` and the caller's ``metadata`` (JSON-able) to ``path`` atomically; returns the path.

    ``metadata`` should carry ``model_sha256`` (and ``model_id``) so that `load_detector` can refuse a file
    fitted on another feature model.
    """
    return write_bytes_atomic(path, _encode(detector, metadata))


def _read_payload(path: Path) -> bytes:
    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise DetectorFileError(f"{path} is not a detector file (bad magic)")
    if len(data) < _PREFIX.size:
        raise DetectorFileError(f"{path} is truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte header")
    _, version, length, digest = _PREFIX.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise DetectorFileError(f"{path} has detector format version {version}; this agent reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}: refit or upgrade")
    payload = data[_PREFIX.size :]
    if len(payload) < length:
        raise DetectorFileError(f"{path} is truncated: payload has {len(payload)} of {length} bytes")
    if len(payload) > length:
        raise DetectorFileError(f"{path} has {len(payload) - length} unexpected trailing bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise DetectorFileError(f"{path} is corrupted or was modified: payload sha256 does not match the header")
    return payload


def _decode(path: Path, payload: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        (json_len,) = _JSON_LEN.unpack_from(payload)
        header = json.loads(payload[_JSON_LEN.size : _JSON_LEN.size + json_len].decode("utf-8"))
        with np.load(io.BytesIO(payload[_JSON_LEN.size + json_len :]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        if not isinstance(header, dict):
            raise ValueError(f"JSON header is a {type(header).__name__}, not an object")
    except (ValueError, OSError, EOFError, struct.error, zipfile.BadZipFile) as exc:
        # The checksum matched, so this is a writer bug or a forged file, not a transmission error.
        raise DetectorFileError(f"{path} has a valid checksum but an unreadable payload: {exc}") from exc
    return header, arrays


def load_detector(
    path: str | os.PathLike[str],
    expected_model_sha256: str | None = None,
    expected_model_id: str | None = None,
) -> LoadedDetector:
    """Read a file written by `save_detector`; raises `DetectorFileError` when it cannot be trusted.

    With ``expected_model_sha256`` (the sha256 of the feature model now loaded, from its manifest) a file
    fitted on another model is refused: its features would be meaningless to the detector. ``expected_model_id``
    only makes that message name the loaded model.
    """
    path = Path(path)
    header, arrays = _decode(path, _read_payload(path))
    metadata = header.get("metadata", {})
    if expected_model_sha256 is not None:
        fitted_sha = metadata.get(META_MODEL_SHA256)
        if fitted_sha != expected_model_sha256:
            fitted = f"model {metadata.get(META_MODEL_ID, '<unnamed>')!s} (sha256 {fitted_sha})"
            loaded = f"model {expected_model_id or '<unnamed>'} (sha256 {expected_model_sha256})"
            raise DetectorFileError(f"{path} was fitted for {fitted}, but the loaded feature model is {loaded}: refit")
    try:
        Upright.from_metadata(metadata.get(META_UPRIGHT))
    except ValueError as exc:
        raise DetectorFileError(f"{path}: {exc}") from exc
    spec = header.get("detector", {})
    known = detector_classes()
    if spec.get("class") not in known:
        raise DetectorFileError(f"{path} holds an unknown detector class {spec.get('class')!r}; known: {sorted(known)}")
    try:
        detector = detector_from_spec(spec, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise DetectorFileError(f"{path} does not hold a complete {spec['class']}: {exc!r}") from exc
    return LoadedDetector(detector, metadata)
