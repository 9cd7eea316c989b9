"""The Coral path: the Edge TPU runs in the interpreter libedgetpu is built for, and a libedgetpu that crashes
its interpreter is tried in a child process first, so the agent survives, runs on CPU and says why.

What cannot exist here is a Coral with a libedgetpu built for another TensorFlow Lite. It is stood in for by a
``tflite_runtime`` package written into the test's folder (ai-edge-litert's interpreter, and a ``load_delegate``
that reads address 0 in native code: a real SIGSEGV, where such a libedgetpu crashes) and a ``libedgetpu.so.1``
on ``LD_LIBRARY_PATH`` that is Python's own ``_ctypes`` library, so that the dlopen before ``load_delegate``
succeeds. Everything else runs as on the device: the interpreter choice, the child process, its signal, the
fallback. Were the delegate ever loaded in the agent's own process, the crash would take pytest down with it.
"""

from __future__ import annotations

import _ctypes
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from edge_agent.embed.features import FeatureExtractor
from edge_agent.embed.manifest import sha256_file
from edge_agent.embed.runtime import interpreter_module, open_interpreter
from edge_agent.embed.runtime.interpreter import RuntimeUnavailable
from edge_agent.embed.runtime.load import EDGETPU_LIBRARY
from edge_agent.embed.runtime.delegates import probe_delegate

STANDIN_VERSION = "2.14.0+standin"
STANDIN_INTERPRETER = '''\
"""Test stand-in: tflite-runtime with a libedgetpu built for another TensorFlow Lite (see test_coral_probe)."""
import ctypes
import os
import time

from ai_edge_litert.interpreter import Interpreter  # noqa: F401
from ai_edge_litert.interpreter import load_delegate as _load_delegate


def load_delegate(library, options=None):
    behaviour = os.environ.get("STANDIN_EDGETPU")
    if behaviour == "crash":
        ctypes.string_at(0)  # reads address 0 in native code: SIGSEGV
    if behaviour == "hang":
        time.sleep(3600)  # a device that never answers
    if behaviour == "reject":
        raise ValueError(f"rejected, options {options}")
    return _load_delegate(library, options)
'''
CRASH_REASON = ("edgetpu: delegate probe crashed with SIGSEGV (libedgetpu was most likely built for another "
                f"TensorFlow Lite than tflite_runtime {STANDIN_VERSION}; see docs/coral.md)")


@pytest.fixture
def standin_coral(tmp_path, monkeypatch):
    """The stand-in tflite_runtime importable here and in child processes, and its libedgetpu.so.1 findable."""
    site = tmp_path / "site"
    (site / "tflite_runtime").mkdir(parents=True)
    (site / "tflite_runtime" / "__init__.py").write_text(f'__version__ = "{STANDIN_VERSION}"\n')
    (site / "tflite_runtime" / "interpreter.py").write_text(STANDIN_INTERPRETER)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / EDGETPU_LIBRARY).symlink_to(_ctypes.__file__)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))  # read by the child's dynamic loader, not by this process's
    yield monkeypatch
    for name in ("tflite_runtime.interpreter", "tflite_runtime"):
        sys.modules.pop(name, None)


@pytest.fixture
def no_tflite_runtime(monkeypatch):
    """tflite_runtime not importable, as in this project's test environment, whatever else is installed."""
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)


@pytest.fixture
def edgetpu_model(shipped_model, tmp_path):
    """The shipped model folder with an 'Edge TPU-compiled' model beside it (a copy: only the stand-in reads it)."""
    dst = tmp_path / "model"
    shutil.copytree(shipped_model, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    shutil.copy(dst / manifest["model_file"], dst / "model_edgetpu.tflite")
    manifest.update(edgetpu_file="model_edgetpu.tflite", edgetpu_sha256=sha256_file(dst / "model_edgetpu.tflite"))
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_the_edge_tpu_gets_tflite_runtime_and_the_rest_ai_edge_litert(standin_coral, caplog):
    with caplog.at_level(logging.WARNING):
        modules = {d: interpreter_module(d).__name__ for d in ("edgetpu", "gpu", "cpu")}
    assert modules == {"edgetpu": "tflite_runtime.interpreter", "gpu": "ai_edge_litert.interpreter",
                       "cpu": "ai_edge_litert.interpreter"}
    assert caplog.text == ""


def test_without_tflite_runtime_the_edge_tpu_tries_ai_edge_litert_with_a_warning(no_tflite_runtime, caplog):
    with caplog.at_level(logging.WARNING):
        assert interpreter_module("edgetpu").__name__ == "ai_edge_litert.interpreter"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "tflite_runtime, the interpreter libedgetpu is built for, cannot be " \
        "imported" in record.getMessage() and "trying the Edge TPU in ai_edge_litert " in record.getMessage()
    with caplog.at_level(logging.WARNING):
        interpreter_module("cpu")
    assert len(caplog.records) == 1  # only the Edge TPU cares


def test_no_interpreter_at_all_is_named(monkeypatch, no_tflite_runtime):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(RuntimeUnavailable, match="no TFLite interpreter could be imported.*tflite_runtime.interpreter"
                                                 ".*ai_edge_litert.interpreter"):
        interpreter_module("edgetpu")


def test_auto_survives_a_libedgetpu_that_segfaults_and_runs_on_cpu(standin_coral, edgetpu_model, caplog):
    standin_coral.setenv("STANDIN_EDGETPU", "crash")
    with caplog.at_level(logging.WARNING):
        extractor = FeatureExtractor(edgetpu_model, delegate="auto")
    assert extractor.delegate == "cpu"  # what the agent's state message reports
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"delegate cpu in use; skipped {CRASH_REASON} | gpu: delegate probe failed: "
                                          "cannot load libtensorflowlite_gpu_delegate.so")
    assert extractor.backend.model_path.name == "model.tflite"
    extractor.backend.interpreter.invoke()


def test_an_explicit_edgetpu_that_segfaults_runs_on_cpu_and_logs_an_error(standin_coral, edgetpu_model, caplog):
    standin_coral.setenv("STANDIN_EDGETPU", "crash")
    with caplog.at_level(logging.WARNING):
        extractor = FeatureExtractor(edgetpu_model, delegate="edgetpu")
    assert extractor.delegate == "cpu"
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"delegate edgetpu requested but unusable, running on cpu: {CRASH_REASON}"


def test_a_missing_libedgetpu_is_a_clean_failure(no_tflite_runtime, edgetpu_model, caplog):
    with caplog.at_level(logging.WARNING):
        handle = open_interpreter(edgetpu_model / "model.tflite", "edgetpu",
                                  edgetpu_model_path=edgetpu_model / "model_edgetpu.tflite")
    assert handle.delegate == "cpu"
    assert ("delegate edgetpu requested but unusable, running on cpu: edgetpu: delegate probe failed: cannot load "
            "libedgetpu.so.1: libedgetpu.so.1: cannot open shared object file") in caplog.text


def test_a_probe_that_hangs_is_killed_at_its_timeout(standin_coral, edgetpu_model):
    standin_coral.setenv("STANDIN_EDGETPU", "hang")
    start = time.monotonic()
    reason = probe_delegate(interpreter_module("edgetpu"), "edgetpu", edgetpu_model / "model_edgetpu.tflite",
                            threads=1, timeout=3)
    assert reason == "did not finish in 3 s (killed)"
    assert time.monotonic() - start < 30


def test_the_probe_loads_libedgetpu_with_the_configured_device(standin_coral, edgetpu_model):
    standin_coral.setenv("STANDIN_EDGETPU", "reject")
    reason = probe_delegate(interpreter_module("edgetpu"), "edgetpu", edgetpu_model / "model_edgetpu.tflite",
                            threads=1, edgetpu_device="usb:0")
    assert reason == "failed: cannot load libedgetpu.so.1: rejected, options {'device': 'usb:0'}"


def test_a_library_that_is_no_delegate_is_a_one_line_failure(standin_coral, edgetpu_model):
    # The stand-in hands over to ai-edge-litert's load_delegate, which finds no delegate entry point in the
    # stand-in library (it raises AttributeError, not ValueError); the child's reason is one line all the same.
    reason = probe_delegate(interpreter_module("edgetpu"), "edgetpu", edgetpu_model / "model_edgetpu.tflite",
                            threads=1)
    assert reason.startswith("failed: cannot load libedgetpu.so.1: ") and "undefined symbol: " \
        "tflite_plugin_create_delegate" in reason and "\n" not in reason


def _coral_present() -> bool:
    usb_ids = {("1a6e", "089a"), ("18d1", "9302")}  # before and after its firmware is loaded
    for device in Path("/sys/bus/usb/devices").glob("*"):
        try:
            ids = ((device / "idVendor").read_text().strip(), (device / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in usb_ids:
            return True
    return Path("/dev/apex_0").exists()  # the PCIe/M.2 Coral's gasket driver


@pytest.mark.skipif(not _coral_present(), reason="hardware: no Coral Edge TPU on this machine")
def test_a_real_coral_passes_the_probe(shipped_model):
    # libedgetpu runs any model: ops edgetpu_compiler did not map stay on the CPU; loading the delegate into the
    # interpreter and the first invoke, where a mismatched libedgetpu crashes, happen either way.
    assert probe_delegate(interpreter_module("edgetpu"), "edgetpu", shipped_model / "model.tflite", threads=1) is None
