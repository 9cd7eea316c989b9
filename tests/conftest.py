"""Shared fixtures: where the real images are, the shipped model, and a small calibration folder.

Every test runs on a fresh clone with the test extra installed; .ci/run fails on any skip except one whose reason
starts with ``hardware:`` (a Pi camera, a Coral Edge TPU, a GPU: hardware a CI machine cannot have).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.capture.images import list_images
from edge_agent.offline.datasets import write_elpv

# Real Mosquitto brokers and a recording subscriber, as fixtures for every test module.
pytest_plugins = ("tests.mqtt_broker",)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "efficientnet-lite0-int8"
#: `[threshold] target_false_reject` for tests that fit on 3-5 good images and need clear defects caught and good
#: parts passed, on bottles and on the elpv cells alike: the default (0.5 %) extrapolates so far from so few
#: images that it catches few defective cells; a share >= 1/(n+1) (the largest held-out score) rejects good ones.
FEW_IMAGE_TARGET = 0.05


def write_clip(path: Path, frames_bgr: list) -> Path:
    """A small MJPG .avi of ``frames_bgr`` (all the same size) at 10 fps, for the OpenCV source's file path."""
    import cv2

    height, width = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    if not writer.isOpened():
        pytest.fail("this OpenCV build cannot write MJPG .avi files (install opencv-python-headless from PyPI)")
    for frame in frames_bgr:
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


def drop_images(folder: Path, paths: list[Path], prefix: str) -> list[str]:
    """Copy real images into a watched folder as a line PC would: written aside, then renamed into place, so the
    agent never reads half a file. Returns the names they got."""
    names = []
    for src in paths:
        dst = folder / f"{prefix}_{src.name}"
        part = folder / f".{dst.name}.part"
        shutil.copyfile(src, part)
        part.rename(dst)
        names.append(dst.name)
    return names


def data_dir() -> Path:
    return Path(os.environ.get("EDGE_DATA_DIR", ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class RealSet:
    """Real photographs of one kind of part in MVTec layout, as the tests use them.

    ``defects`` are the clearly defective parts (bottle: ``broken_large``; solar cells: defect probability 1).
    """

    name: str
    root: Path
    train_good: list[Path]
    test_good: list[Path]
    defects: list[Path]

    def line_folders(self, where: Path, n_good: int = 6) -> tuple[Path, Path]:
        """``where/good`` with ``n_good`` training parts to fit on, and ``where/frames`` with one defective part
        (``a_defect``) then one good part (``b_good``) in the order a folder source hands them out."""
        good, frames = where / "good", where / "frames"
        good.mkdir(), frames.mkdir()
        for p in self.train_good[:n_good]:
            shutil.copyfile(p, good / p.name)
        shutil.copyfile(self.defects[0], frames / f"a_defect{self.defects[0].suffix}")
        shutil.copyfile(self.test_good[0], frames / f"b_good{self.test_good[0].suffix}")
        return good, frames


def _mvtec_bottle(root: Path) -> RealSet:
    return RealSet("mvtec_ad_bottle", root, list_images(root / "train" / "good"), list_images(root / "test" / "good"),
                   list_images(root / "test" / "broken_large"))


def _elpv_mono(out: Path) -> RealSet:
    root = write_elpv(out, "mono", n_train=60)
    return RealSet("elpv mono (elpv-dataset package)", root, list_images(root / "train" / "good"),
                   list_images(root / "test" / "good"), list_images(root / "test" / "defective"))


@pytest.fixture(scope="session")
def real_set(tmp_path_factory) -> RealSet:
    """MVTec AD bottle from ``$EDGE_DATA_DIR`` (default ``../shared/data``) when it is there; otherwise the
    elpv solar cells that the test extra installs, so that a fresh clone runs every test on real images."""
    bottle = data_dir() / "mvtec_ad_bottle"
    if bottle.is_dir():
        return _mvtec_bottle(bottle)
    return _elpv_mono(tmp_path_factory.mktemp("elpv"))


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """The shipped models' calibration set, rebuilt from registry packages (scikit-image, elpv-dataset, both in the
    test extra)."""
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
