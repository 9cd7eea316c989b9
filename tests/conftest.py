"""Shared fixtures: where the real images are, the shipped model, and a small calibration folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real Mosquitto brokers and a recording subscriber, as fixtures for every test module.
pytest_plugins = ("tests.mqtt_broker",)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "efficientnet-lite0-int8"


def data_dir() -> Path:
    return Path(os.environ.get("EDGE_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def bottle_dir() -> Path:
    path = data_dir() / "mvtec_ad_bottle"
    if not path.is_dir():
        pytest.skip(f"real images not found at {path}: set EDGE_DATA_DIR to the folder holding mvtec_ad_bottle")
    return path


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """The shipped models' calibration set, rebuilt from registry packages (scikit-image, elpv-dataset)."""
    pytest.importorskip("skimage")
    pytest.importorskip("elpv_dataset")
    from converter.calibration_set import write_calibration_set

    out = tmp_path_factory.mktemp("calibration")
    write_calibration_set(out)
    return out


@pytest.fixture(scope="session")
def small_calibration_dir(calibration_dir: Path, tmp_path_factory) -> Path:
    """Twelve of those images: enough to calibrate, quick to convert with."""
    out = tmp_path_factory.mktemp("small_calibration")
    for p in sorted(calibration_dir.iterdir())[::7][:12]:
        (out / p.name).write_bytes(p.read_bytes())
    return out
