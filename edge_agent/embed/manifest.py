"""The manifest: the contract between the workstation converter and the camera.

Why: the device must never guess how a model was built. Everything it needs to feed the model and read
its outputs (input size, colour order, dtype and quantisation, which output tensor is which feature level,
the dims of each level) and to trust it (sha256 of the model file) is written here by the converter, and
the agent reads nothing else about the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Features, from the extractor to the detectors: one array per level the manifest names, one row per image
#: (``"pooled/<tap>"`` (n, d) vectors, ``"spatial/<tap>"`` (n, h, w, c) maps). Defined with the manifest, which
#: names the levels, so that producer and consumers share one definition.
Features = Mapping[str, np.ndarray]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match the model file beside it."""


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class OutputSpec:
    level: str  # "pooled/stage4" or "spatial/stage3"
    tensor: str  # the interpreter's output tensor name
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None = None


@dataclass(frozen=True)
class InputSpec:
    tensor: str
    height: int
    width: int
    colour_order: str  # always "RGB" in [0, 255]: normalisation is inside the model
    dtype: str  # "uint8" for full-integer models, "float32" otherwise
    quantization: Quantization | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    backbone: str
    precision: str  # fp32 | fp16 | int8
    model_file: str
    model_sha256: str
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    converter_version: str
    created_at: str
    edgetpu_file: str | None = None
    edgetpu_sha256: str | None = None
    weights: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def levels(self) -> dict[str, int]:
        """Feature dims per level (channels of a spatial map)."""
        return {o.level: int(o.shape[-1]) for o in self.outputs}

    @property
    def model_id(self) -> str:
        """Short id that names this exact model file in verdicts and fitted detectors."""
        return f"{self.name}@{self.model_sha256[:12]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _quant(d: Any) -> Quantization | None:
    return None if d is None else Quantization(float(d["scale"]), int(d["zero_point"]))


def manifest_from_dict(d: dict[str, Any]) -> Manifest:
    """Parse and validate; every problem names the key."""
    if not isinstance(d, dict):
        raise ManifestError("manifest must be a JSON object")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"manifest schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}: "
            "rebuild the model with a matching converter"
        )
    try:
        inp = d["input"]
        outputs = tuple(
            OutputSpec(o["level"], o["tensor"], tuple(int(s) for s in o["shape"]), o["dtype"], _quant(o.get("quantization")))
            for o in d["outputs"]
        )
        m = Manifest(
            name=d["name"], backbone=d["backbone"], precision=d["precision"], model_file=d["model_file"],
            model_sha256=d["model_sha256"],
            input=InputSpec(inp["tensor"], int(inp["height"]), int(inp["width"]), inp["colour_order"],
                            inp["dtype"], _quant(inp.get("quantization"))),
            outputs=outputs, converter_version=d["converter_version"], created_at=d["created_at"],
            edgetpu_file=d.get("edgetpu_file"), edgetpu_sha256=d.get("edgetpu_sha256"),
            weights=d.get("weights", {}), calibration=d.get("calibration", {}), fidelity=d.get("fidelity", {}),
        )
    except KeyError as exc:
        raise ManifestError(f"manifest lacks key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest has a malformed value: {exc}") from None
    if m.precision not in ("fp32", "fp16", "int8"):
        raise ManifestError(f"manifest precision {m.precision!r} is not fp32, fp16 or int8")
    if m.input.colour_order != "RGB":
        raise ManifestError(f"manifest input colour_order {m.input.colour_order!r} is not supported (RGB)")
    if not outputs:
        raise ManifestError("manifest lists no outputs")
    if len({o.level for o in outputs}) != len(outputs):
        raise ManifestError("manifest lists a level twice")
    return m


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: str | Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {model_dir}: is this a model folder made by edge-convert?")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot parse {path}: {exc}") from None
    return manifest_from_dict(data)


def verified_model_path(model_dir: str | Path, manifest: Manifest, edgetpu: bool = False) -> Path:
    """Path of the model file after checking its sha256 against the manifest (refuses a swapped file)."""
    name, expected = (manifest.edgetpu_file, manifest.edgetpu_sha256) if edgetpu else (manifest.model_file, manifest.model_sha256)
    if name is None:
        raise ManifestError(f"{model_dir} holds no Edge TPU model: convert with edge-convert --edgetpu")
    path = Path(model_dir) / name
    if not path.is_file():
        raise ManifestError(f"model file {path} named by the manifest is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ManifestError(f"{path} has sha256 {actual[:12]}..., the manifest expects {str(expected)[:12]}...: "
                            "the file was changed or belongs to another manifest")
    return path
