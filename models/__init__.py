"""Shipped feature models, installed as ``edge_agent.models`` so a device finds one without TensorFlow or internet."""

from importlib.resources import files
from pathlib import Path

DEFAULT_MODEL = "efficientnet-lite0-int8"


def default_model_dir() -> Path:
    """Folder of the shipped default model (``model.tflite`` + ``manifest.json``)."""
    return Path(str(files(__name__) / DEFAULT_MODEL))
