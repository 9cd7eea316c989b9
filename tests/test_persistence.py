"""Detector files: round trip, and refusal of truncated, tampered, unknown-version and other-model files."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_agent.learn.augment import PRESETS
from edge_agent.learn.detectors import DETECTOR_NAMES, make_detector
from edge_agent.learn.detectors.persistence import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    UPRIGHT_VERSION,
    MAGIC,
    DetectorFileError,
    load_detector,
    save_detector,
)

MODEL_SHA = "ab" * 32


def features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "pooled/stage4": rng.normal(size=(n, 6)).astype(np.float32),
        "pooled/stage6": rng.normal(size=(n, 9)).astype(np.float32),
        "spatial/stage3": rng.normal(size=(n, 6, 6, 5)).astype(np.float32),
        "spatial/stage4": rng.normal(size=(n, 3, 3, 7)).astype(np.float32),
    }


def metadata() -> dict:
    return {
        "model_id": "efficientnet-lite0-int8",
        "model_sha256": MODEL_SHA,
        "augmentation": PRESETS["bottle"].to_dict(),
        "threshold": 12.5,
        "n_train": 20,
        "fitted_at": "2026-01-01T06:00:00Z",
    }


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    det = make_detector("mahalanobis").fit(features(np.random.default_rng(0), 20))
    return save_detector(tmp_path / "detector.bin", det, metadata())


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_round_trip_gives_identical_scores(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    params = {"n_channels": 8, "sigma": 0.5} if name == "padim" else {}
    det = make_detector(name, **params).fit(features(rng, 20))
    path = save_detector(tmp_path / f"{name}.bin", det, metadata())
    loaded, meta = load_detector(path, expected_model_sha256=MODEL_SHA)
    assert type(loaded) is type(det)
    assert loaded.get_params() == det.get_params()
    assert meta == metadata()
    assert loaded.levels_ == det.levels_ and loaded.n_train_ == det.n_train_
    test = features(rng, 7)
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_levels_param_survives_json(tmp_path: Path) -> None:
    det = make_detector("knn", k=2, levels=("pooled/stage6",)).fit(features(np.random.default_rng(2), 10))
    loaded, _ = load_detector(save_detector(tmp_path / "d.bin", det, metadata()))
    assert loaded.get_params() == {"k": 2, "levels": ("pooled/stage6",)}


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 30, 4, 0):
        saved.write_bytes(data[:cut])
        with pytest.raises(DetectorFileError, match="truncated"):
            load_detector(saved)


def test_tampered_payload(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(DetectorFileError, match="sha256 does not match"):
        load_detector(saved)


def test_trailing_bytes_and_foreign_file(saved: Path, tmp_path: Path) -> None:
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(DetectorFileError, match="trailing"):
        load_detector(saved)
    other = tmp_path / "other.npz"
    other.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(DetectorFileError, match="not a detector file"):
        load_detector(other)


def test_unknown_format_version(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    unknown = max(READABLE_VERSIONS) + 1
    struct.pack_into("<I", data, len(MAGIC), unknown)
    saved.write_bytes(bytes(data))
    with pytest.raises(DetectorFileError, match=f"version {unknown}"):
        load_detector(saved)


def test_a_detector_that_turns_parts_upright_is_a_version_older_agents_refuse(tmp_path: Path) -> None:
    """An agent from before the upright step would judge such a file's parts unturned: silently wrong."""
    detector = make_detector("mahalanobis").fit({"pooled/a": np.random.default_rng(0).normal(size=(12, 4))})
    plain, turned = tmp_path / "plain.edet", tmp_path / "turned.edet"
    save_detector(plain, detector, {"upright": None})
    save_detector(turned, detector, {"upright": {"length": 1.0, "width": 0.55}})
    version = lambda p: struct.unpack_from("<I", p.read_bytes(), len(MAGIC))[0]  # noqa: E731
    assert (version(plain), version(turned)) == (FORMAT_VERSION, UPRIGHT_VERSION) == (1, 2)
    assert load_detector(turned).metadata["upright"] == {"length": 1.0, "width": 0.55}


def test_fitted_for_another_model(saved: Path) -> None:
    other_sha = "cd" * 32
    with pytest.raises(DetectorFileError) as info:
        load_detector(saved, expected_model_sha256=other_sha, expected_model_id="efficientnet-b4-int8")
    message = str(info.value)
    assert "efficientnet-lite0-int8" in message and MODEL_SHA in message
    assert "efficientnet-b4-int8" in message and other_sha in message
    assert load_detector(saved).metadata["model_sha256"] == MODEL_SHA  # without expectation: loads


def test_forged_file_with_valid_checksum_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"metadata": {}, "detector": {"class": "os.system", "params": {}, "attrs": {}}}).encode()
    payload = struct.pack("<I", len(header)) + header
    path = tmp_path / "forged.bin"
    path.write_bytes(
        struct.pack("<8sIQ32s", MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + payload
    )
    with pytest.raises(DetectorFileError):
        load_detector(path)


def test_save_is_atomic_over_an_existing_file(saved: Path) -> None:
    before = saved.read_bytes()
    with pytest.raises(ValueError, match="not fitted"):
        save_detector(saved, make_detector("mahalanobis"), metadata())
    assert saved.read_bytes() == before  # a failed save leaves the previous model intact
    assert list(saved.parent.iterdir()) == [saved]
    refit = make_detector("knn").fit(features(np.random.default_rng(3), 5))
    save_detector(saved, refit, {**metadata(), "threshold": 3.0})
    loaded, meta = load_detector(saved)
    assert type(loaded).__name__ == "KNNDetector" and meta["threshold"] == 3.0
    assert issubclass(DetectorFileError, ValueError)
