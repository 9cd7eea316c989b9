"""edge-convert end to end: real conversions of Lite0, and every bad input fails cleanly with the output untouched."""

import hashlib
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from converter.backbones import get_backbone  # noqa: E402
from converter.cli import main  # noqa: E402
from converter.feature_model import resolve_weights  # noqa: E402
from edge_agent.embed.features import FeatureExtractor  # noqa: E402
from edge_agent.embed.manifest import load_manifest  # noqa: E402


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def existing_output(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"the model the device runs now")
    (out / "manifest.json").write_text("{}")
    return out


def _fails(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-convert: error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


@pytest.fixture
def lite0_weights() -> Path:
    return Path(resolve_weights(get_backbone("efficientnet-lite0"), "imagenet", None))


def _bad_inputs(tmp_path: Path, small_calibration_dir: Path, lite0_weights: Path):
    base = ["--backbone", "efficientnet-lite0", "--calibration", str(small_calibration_dir), "--overwrite"]
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(lite0_weights.read_bytes()[:100_000])
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(small_calibration_dir.iterdir())[:3]:
        (few / p.name).write_bytes(p.read_bytes())
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in sorted(small_calibration_dir.iterdir()):
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "zz_bad.png").write_bytes(b"\x89PNG not really")
    (broken / "aa_empty.jpg").write_bytes(b"")
    return {
        "unknown backbone": (["--backbone", "resnet50", "--calibration", str(small_calibration_dir)],
                             ("unknown backbone", "efficientnet-lite0")),
        "missing weights": (base + ["--weights", str(tmp_path / "nope.pth")], ("weights file not found",)),
        "corrupt weights": (base + ["--weights", str(corrupt)], ("corrupt.pth",)),
        "sha256 mismatch": (base + ["--weights", str(lite0_weights), "--weights-sha256", "0" * 64], ("sha256 mismatch",)),
        "calibration missing": (["--backbone", "efficientnet-lite0", "--calibration", str(tmp_path / "nowhere"), "--overwrite"],
                                ("image folder not found",)),
        "calibration empty": (["--backbone", "efficientnet-lite0", "--calibration", str(empty), "--overwrite"], ("no images",)),
        "calibration too small": (["--backbone", "efficientnet-lite0", "--calibration", str(few), "--overwrite"],
                                  ("holds 3 images", "at least 10")),
        "unreadable images": (["--backbone", "efficientnet-lite0", "--calibration", str(broken), "--overwrite"],
                              ("zz_bad.png", "aa_empty.jpg")),
        "int8 without calibration": (["--backbone", "efficientnet-lite0", "--overwrite"], ("--calibration",)),
        "edgetpu without compiler": (base + ["--edgetpu"], ("edgetpu_compiler not found", "apt-get install edgetpu-compiler")),
    }


def test_bad_inputs_fail_with_one_line_and_leave_output_untouched(
    capsys, tmp_path, small_calibration_dir, lite0_weights, existing_output, monkeypatch
):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no edgetpu_compiler
    before = _snapshot(existing_output)
    for case, (argv, fragments) in _bad_inputs(tmp_path, small_calibration_dir, lite0_weights).items():
        _fails(capsys, argv + ["--output", str(existing_output)], *fragments)
        assert _snapshot(existing_output) == before, case
    assert sorted(p.name for p in existing_output.parent.iterdir() if p.name.startswith(".")) == []


def test_non_empty_output_needs_overwrite(capsys, small_calibration_dir, existing_output):
    before = _snapshot(existing_output)
    _fails(capsys, ["--backbone", "efficientnet-lite0", "--calibration", str(small_calibration_dir),
                    "--output", str(existing_output)], "not empty", "--overwrite")
    assert _snapshot(existing_output) == before


def test_unwritable_output_folder(capsys, tmp_path, small_calibration_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    _fails(capsys, ["--backbone", "efficientnet-lite0", "--calibration", str(small_calibration_dir),
                    "--output", str(blocker / "model")], "not writable")
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.parametrize("precision, input_dtype", [("fp32", "float32"), ("fp16", "float32")])
def test_float_conversions_run_on_the_device_extractor(tmp_path, small_calibration_dir, precision, input_dtype):
    out = tmp_path / precision
    assert main(["--backbone", "efficientnet-lite0", "--precision", precision, "--calibration",
                 str(small_calibration_dir), "--output", str(out)]) == 0
    m = load_manifest(out)
    assert m.input.dtype == input_dtype and m.levels == {"pooled/stage4": 80, "pooled/stage6": 192, "pooled/stage7": 320}
    assert all(v["mean_cosine"] > 0.999 for v in m.fidelity["levels"].values())
    feats = FeatureExtractor(out).embed_one(np.full((300, 200, 3), 128, np.uint8))
    assert {k: v.shape for k, v in feats.items()} == {"pooled/stage4": (80,), "pooled/stage6": (192,), "pooled/stage7": (320,)}


def _fake_compiler(bin_dir: Path) -> None:
    """Stands in for Coral's edgetpu_compiler, which exists only in Coral's apt repository: same CLI, copies the model."""
    script = bin_dir / "edgetpu_compiler"
    script.write_text('#!/bin/sh\n# usage: edgetpu_compiler -s -o OUT MODEL\nout="$3"; model="$4"\n'
                      'cp "$model" "$out/$(basename "$model" .tflite)_edgetpu.tflite"\necho "Edge TPU Compiler (test double)"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_int8_with_edgetpu_and_spatial_maps(tmp_path, small_calibration_dir, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_compiler(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "int8"
    assert main(["--backbone", "efficientnet-lite0", "--calibration", str(small_calibration_dir), "--spatial-taps", "3,4",
                 "--edgetpu", "--output", str(out)]) == 0
    m = load_manifest(out)
    assert m.precision == "int8" and m.input.dtype == "uint8" and m.input.quantization.scale == pytest.approx(1, abs=1e-3)
    assert m.levels["spatial/stage3"] == 40 and dict(o for o in ((x.level, x.shape) for x in m.outputs))["spatial/stage4"] == (1, 14, 14, 80)
    assert m.edgetpu_file == "model_edgetpu.tflite" and (out / m.edgetpu_file).is_file()
    assert m.fidelity["n_images"] == 2 and all(v["mean_cosine"] > 0.9 for v in m.fidelity["levels"].values())
    with caplog.at_level(logging.WARNING):
        extractor = FeatureExtractor(out, delegate="auto")  # no libedgetpu here: falls back, says why
    assert extractor.delegate == "cpu"
    assert "libedgetpu" in caplog.text
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind
