"""Delegate selection on this machine (CPU only): explicit requests fail clearly, auto falls back and says why."""

import gc
import logging
import sys

import pytest

from edge_agent.embed.manifest import load_manifest
from edge_agent.embed.runtime import open_interpreter
from edge_agent.embed.runtime.delegates import DelegateError


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


def test_gpu_unavailable_here_is_an_error_not_a_silent_cpu(shipped_model, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(DelegateError, match="cannot load libtensorflowlite_gpu_delegate.so"):
        open_interpreter(shipped_model / "model.tflite", "gpu")
    gc.collect()
    # A missing library is found before load_delegate, whose half-built Delegate would print a traceback when
    # collected (ai-edge-litert): on a camera without a GPU that reads like a crash in the journal.
    assert unraisable == []


def test_auto_falls_back_to_cpu_and_logs_why(shipped_model, caplog):
    with caplog.at_level(logging.WARNING):
        handle = open_interpreter(shipped_model / "model.tflite", "auto")
    assert handle.delegate == "cpu"
    assert "skipped" in caplog.text and "edgetpu" in caplog.text and "gpu" in caplog.text
