"""The TFLite back-end on the real interpreter and the shipped model, and delegate selection on this machine
(CPU only): an accelerator that is not there leaves the model on CPU with the reason logged, a model folder that
cannot run on the Edge TPU fails clearly. A crashing libedgetpu: tests/test_coral_probe.py."""

import gc
import json
import logging
import shutil
import sys

import numpy as np
import pytest

from edge_agent.embed.manifest import ManifestError, load_manifest
from edge_agent.embed.runtime import DelegateError, RuntimeOptions, open_backend, open_interpreter
from edge_agent.embed.runtime.tflite import TFLiteBackend


def test_tflite_backend_declares_the_model_and_runs_it(shipped_model):
    m = load_manifest(shipped_model)
    backend = open_backend(shipped_model, m, RuntimeOptions("cpu", threads=1))
    assert isinstance(backend, TFLiteBackend) and backend.delegate == "cpu"
    assert backend.input.shape == (1, m.input.height, m.input.width, 3) and backend.input.dtype == m.input.dtype
    assert {level: (t.name, t.shape, t.dtype) for level, t in backend.outputs.items()} == {
        o.level: (o.tensor, o.shape, o.dtype) for o in m.outputs}
    x = np.random.default_rng(0).integers(0, 256, backend.input.shape, dtype=np.uint8)
    first = backend.run(x)
    assert {level: (v.shape, v.dtype.name) for level, v in first.items()} == {o.level: (o.shape, o.dtype) for o in m.outputs}
    again = backend.run(x)  # the same input gives the same outputs, and the first ones were copies, not views
    backend.run(np.zeros_like(x))
    for level in first:
        np.testing.assert_array_equal(first[level], again[level])


def _edited_copy(shipped_model, tmp_path, edit):
    """The shipped model folder copied, its manifest changed by ``edit(dict)``."""
    dst = tmp_path / "model"
    shutil.copytree(shipped_model, dst)
    d = json.loads((dst / "manifest.json").read_text())
    edit(d)
    (dst / "manifest.json").write_text(json.dumps(d))
    return dst


def test_tflite_backend_maps_levels_by_tensor_name(shipped_model, tmp_path):
    dst = _edited_copy(shipped_model, tmp_path, lambda d: d["outputs"][1].update(tensor="no_such_tensor"))
    with pytest.raises(ManifestError, match="no output tensor 'no_such_tensor' for level pooled/stage6"):
        open_backend(dst, load_manifest(dst))


def test_a_model_file_of_no_known_runtime_is_refused(shipped_model, tmp_path):
    dst = _edited_copy(shipped_model, tmp_path, lambda d: d.update(model_file="model.onnx"))
    with pytest.raises(ManifestError, match=r"model.onnx is of no runtime this device has \(.tflite files\)"):
        open_backend(dst, load_manifest(dst))


def test_cpu_with_threads(shipped_model):
    handle = open_interpreter(shipped_model / load_manifest(shipped_model).model_file, "cpu", threads=1)
    assert handle.delegate == "cpu"
    handle.interpreter.invoke()


def test_unknown_delegate(shipped_model):
    with pytest.raises(DelegateError, match="unknown delegate 'tpu'.*cpu, gpu, edgetpu, auto"):
        open_interpreter(shipped_model / "model.tflite", "tpu")


def test_edgetpu_without_compiled_model_fails_clearly(shipped_model):
    with pytest.raises(DelegateError, match="no Edge TPU-compiled model"):
        open_interpreter(shipped_model / "model.tflite", "edgetpu")


def test_gpu_unavailable_here_runs_on_cpu_and_says_so_as_an_error(shipped_model, monkeypatch, caplog):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with caplog.at_level(logging.WARNING):
        handle = open_interpreter(shipped_model / "model.tflite", "gpu")
    assert handle.delegate == "cpu"  # an unattended camera keeps inspecting; the state message says cpu
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage().startswith(
        "delegate gpu requested but unusable, running on cpu: gpu: delegate probe failed: "
        "cannot load libtensorflowlite_gpu_delegate.so")
    gc.collect()
    # The libraries were tried in the probe's child process only; and there a missing library is found before
    # load_delegate, whose half-built Delegate would print a traceback when collected (ai-edge-litert).
    assert unraisable == []


def test_auto_falls_back_to_cpu_and_logs_why(shipped_model, caplog):
    with caplog.at_level(logging.WARNING):
        handle = open_interpreter(shipped_model / "model.tflite", "auto")
    assert handle.delegate == "cpu"
    assert "skipped" in caplog.text and "edgetpu" in caplog.text and "gpu" in caplog.text
